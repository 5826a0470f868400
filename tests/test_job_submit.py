"""`ray job submit` against a real `ray start --head` cluster with token auth on (Ray 2.60's default)."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from helpers import REPO

from minigpt_ray.cluster import free_port

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.cluster


def _ray(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def head_node(tmp_path):
    """A separate Ray head on its own ports (not 6379/8265), stopped by killing its process group afterwards:
    `ray stop` would also stop the session's embedded Ray."""
    # A stock `ray start`: Serve's proxy ingress (the session's embedded Ray covers HAProxy ingress).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "MINIGPT_RAY_PICKED_PORTS") and not k.startswith("RAY_SERVE_")
    }
    env["PATH"] = f"{BIN}:{env['PATH']}"
    dashboard_port = free_port()
    with open(tmp_path / "head.log", "w") as log:  # the child keeps its own descriptor
        head = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={free_port()}",
                "--num-cpus=2",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.time() + 120
    while _ray(["job", "list", "--address", address], dict(env, RAY_AUTH_MODE="token"), timeout=60).returncode:
        assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-3000:]
        time.sleep(2)
    # Clients must opt in to sending the token: RAY_AUTH_MODE=token, token from ~/.ray/auth_token.
    yield address, dict(env, RAY_AUTH_MODE="token")
    # Every process of this cluster is a descendant of `ray start --block`: SIGKILL them all at once (a graceful
    # SIGTERM spent half a minute draining the Serve app, and nothing of this throwaway cluster needs keeping).
    for process in [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    head.wait(timeout=60)


def _submit(address: str, env: dict, job: str, args: str, timeout: float) -> str:
    """`ray job submit --working-dir <repo> -- python jobs/<job>.py <args>`; returns the job's log."""
    submitted = _ray(
        ["job", "submit", "--address", address, "--working-dir", str(REPO), "--", "python", f"jobs/{job}.py"]
        + args.split(),
        env,
        timeout=timeout,
    )
    logs = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0 and "succeeded" in logs, logs[-4000:]
    return logs


def test_job_submit_runs_sweep_and_serve_with_token_auth(head_node, tiny_trained, tmp_path):
    """(Submitting jobs/finetune.py is what the README's cluster walkthrough does: tests/test_readme.py.)"""
    address, env = head_node
    # Token auth is on: a client with a wrong token, or none, is turned away.
    for bad_env in (dict(env, RAY_AUTH_TOKEN="not-the-cluster-token"), dict(env, RAY_AUTH_MODE="disabled")):
        rejected = _ray(["job", "list", "--address", address], bad_env)
        assert rejected.returncode != 0
        assert "token" in (rejected.stdout + rejected.stderr).lower()
    # The compression sweep, on a trained model: Tune trials on the cluster.
    sweep_output = tmp_path / "sweep-out"
    logs = _submit(
        address, env, "sweep",
        f"--model {tiny_trained['dir']} --data shakespeare --max-chars-per-source 60000 --block-size 64 "
        "--eval-blocks 8 --algorithm grid --methods none,magnitude --sparsities 0.5 --patterns unstructured "
        f"--quants none,int8-weight --decode-tokens 4 --output {sweep_output}",
        timeout=900,
    )  # fmt: skip
    assert "3 trials" in logs and "winner:" in logs
    assert (sweep_output / "winner" / "manifest.json").is_file() and (sweep_output / "pareto.csv").is_file()

    # And the winner is served by a submitted job that deploys and exits, leaving the app running on the cluster.
    port = free_port()
    logs = _submit(
        address, env, "serve",
        f"--model {sweep_output / 'winner'} --port {port} --cpus-per-replica 0.5 --max-replicas 1",
        timeout=600,
    )  # fmt: skip
    assert "deployed on the cluster" in logs
    assert "ingress: Serve proxy" in logs  # read from the cluster's processes, not from this test's environment
    reply = requests.post(
        f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 8}, timeout=120
    )
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    status = _ray(["serve", "status", "--address", address], env)
    assert status.returncode == 0 and "minigpt" in status.stdout and "RUNNING" in status.stdout, status.stdout
