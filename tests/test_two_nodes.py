"""A real multi-node Ray cluster on one machine (tests/two_nodes_scenario.py, in a process of its own): training
workers SPREAD across nodes, a node crashed mid-run and the run resumed once capacity returns, and a Serve replica
on a non-head node answering through the head's ingress."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO


def run_scenario(work) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a cluster of its own, no token
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "two_nodes_scenario.py"), str(work)],
        cwd=REPO / "tests",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def test_spread_crash_resume_and_a_replica_on_another_node(spawns_ray, tmp_path):
    scenario = run_scenario(tmp_path / "two")
    head, node2, node3 = scenario["head"], scenario["node2"], scenario["node3"]
    metrics = scenario["metrics"]
    first, *restarts = metrics["placements"]
    assert sorted(first) == sorted([head, node2])  # SPREAD: one worker on each node
    assert restarts and set(restarts[-1]) <= {head, node3}  # restarted without the crashed node
    assert len(metrics["resumed_from"]) == 1 and metrics["resumed_from"][0] >= 10  # from a checkpoint, not step 0
    assert metrics["steps"] == 60 and metrics["train_tokens"] == 60 * 2 * 8 * 64  # continued, counted once
    # It kept learning across the crash: each evaluation (steps 0, 30, 60) lower than the one before.
    losses = [h["val_loss"] for h in metrics["history"]]
    assert [h["step"] for h in metrics["history"]] == [0, 30, 60] and losses == sorted(losses, reverse=True), losses
    # Only node3 has the 2 CPUs the replica needs; Serve's proxy runs on the head only.
    assert scenario["health"]["node_id"] == node3 != head and scenario["health"]["ingress"] == "proxy"
    assert scenario["completion_status"] == 200 and scenario["completion"]["usage"]["completion_tokens"] == 4
