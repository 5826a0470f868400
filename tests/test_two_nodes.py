"""A real multi-node Ray cluster on one machine (tests/two_nodes_scenario.py, in a process of its own): training
workers SPREAD across nodes, a node crashed mid-run and the run resumed once capacity returns, and a Serve replica
on a non-head node answering through the head's ingress."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO
from two_nodes_scenario import two_node_run_config

from minigpt_ray.training.trainer import run_training


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


def test_spread_crash_resume_and_a_replica_on_another_node(ray_cluster, spawns_ray, tmp_path):
    scenario = run_scenario(tmp_path / "two")
    head, node2, node3 = scenario["head"], scenario["node2"], scenario["node3"]
    metrics = scenario["metrics"]
    first, *restarts = metrics["placements"]
    assert sorted(first) == sorted([head, node2])  # SPREAD: one worker on each node
    assert restarts and set(restarts[-1]) <= {head, node3}  # restarted without the crashed node
    assert len(metrics["resumed_from"]) == 1 and metrics["resumed_from"][0] >= 10  # from a checkpoint, not step 0
    assert metrics["steps"] == 60 and metrics["train_tokens"] == 60 * 2 * 8 * 64  # continued, counted once
    # The same run on one node (the session's Ray): the same amount of training gives the same quality. Not bit for
    # bit: Ray Data hands blocks to workers as they ask, so each worker's data order differs between runs.
    one_node = run_training(two_node_run_config(tmp_path / "one", ""))
    assert one_node["steps"] == metrics["steps"] and one_node["train_tokens"] == metrics["train_tokens"]
    assert abs(metrics["final_val_loss"] - one_node["final_val_loss"]) < 0.05 * one_node["final_val_loss"]
    # Only node3 has the 2 CPUs the replica needs; Serve's proxy runs on the head only.
    assert scenario["health"]["node_id"] == node3 != head and scenario["health"]["ingress"] == "proxy"
    assert scenario["completion_status"] == 200 and scenario["completion"]["usage"]["completion_tokens"] == 4
