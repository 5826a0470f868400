"""jobs/serve.py: bad settings fail in one line before Ray starts; on an embedded Ray it serves until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from helpers import REPO

from minigpt_ray import cli
from minigpt_ray.cluster import free_port


def serve_main(argv):
    return cli.main(["serve", *argv])


@pytest.mark.parametrize(
    "argv, field, detail",
    [
        (["--model", "/no/such/model"], "model: ", "does not exist"),
        (["--port", "0"], "port: ", "[1, 65535]"),
        (["--max-replicas", "0"], "scaling.max_replicas: ", "must be >="),
        (["--prompt-overflow", "drop"], "limits.prompt_overflow: ", "error or truncate-left"),
        (["--max-batch-size", "0"], "batching.max_batch_size: ", "must be >= 1"),
        (["--default-max-tokens", "999"], "limits.default_max_tokens: ", "[1, max_new_tokens]"),
        (["--route-prefix", "v1"], "route_prefix: ", "start with /"),
    ],
)
def test_bad_settings_one_line_exit_2(argv, field, detail, tiny_zh_model, capsys):
    base = ["--model", tiny_zh_model["dir"]]
    assert serve_main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + field) and detail in err[0], err


def test_help_explains_each_required_flag(capsys):
    with pytest.raises(SystemExit):
        serve_main(["--help"])
    text = capsys.readouterr().out
    for flag in ["--model", "--host", "--port", "--config", "--min-replicas", "--max-batch-size"]:
        assert flag in text


def wait_until_healthy(proc, port: int, log_file, deadline: float) -> None:
    while True:
        assert proc.poll() is None, log_file.read_text()[-3000:]
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or the app still starting
            pass
        assert time.time() < deadline, log_file.read_text()[-3000:]
        time.sleep(1)


def test_embedded_run_serves_until_ctrl_c_and_the_ingress_cuts_a_hung_request(tiny_zh_model, tmp_path, spawns_ray):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_SERVE_HAPROXY")}
    env["MINIGPT_RAY_FAULT"] = "hang-prompt:HANG"  # that prompt hangs its replica past the app's own timeout
    with open(tmp_path / "serve.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "jobs" / "serve.py"),
                "--model",
                tiny_zh_model["dir"],
                "--port",
                str(port),
                "--cpus-per-replica",
                "1",
                "--request-timeout-s",
                "2",
                "--ingress-timeout-s",
                "4",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 180
        wait_until_healthy(proc, port, tmp_path / "serve.log", deadline)
        reply = requests.post(
            f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "中国", "max_tokens": 4}, timeout=60
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
        # HAProxy reloads once the replica joins its backend; a request in flight across that reload is dropped
        # (a 500 that says nothing about timeouts), so the hanging one waits for it.
        while not _haproxy_reloaded_with_replica((tmp_path / "serve.log").read_text()):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        sent = time.time()
        hung = requests.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "HANG"}, timeout=60)
        # Cut by Serve's request timeout (408; under load its direct ingress has also answered a bare 500 at that
        # moment) or HAProxy's server timeout (504), not left hanging: the elapsed time says which cut it.
        waited = time.time() - sent
        assert hung.status_code in (408, 500, 504) and 3.5 < waited < 30, (hung.status_code, hung.text, waited)
        again = requests.post(
            f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "中国", "max_tokens": 4}, timeout=60
        )
        assert again.status_code == 200  # the replica still serves other requests
        while "] serving " not in (tmp_path / "serve.log").read_text():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.5)
        assert "ingress: HAProxy -> replicas" in (tmp_path / "serve.log").read_text()
        time.sleep(1)
        assert proc.poll() is None  # still serving: it blocks until interrupted
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=120) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):  # the embedded Ray's processes, if any outlived the driver
            os.killpg(proc.pid, signal.SIGKILL)
    assert "serving" in (tmp_path / "serve.log").read_text()


def _haproxy_reloaded_with_replica(log: str) -> bool:
    """The log shows HAProxy reloaded after its backend got a replica's server."""
    joined = log.find("servers=[ServerConfig(")
    return joined >= 0 and "Successfully performed graceful HAProxy reload" in log[joined:]


def test_shipped_serve_config_files_parse_and_build(tiny_zh_model):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from minigpt_ray.config import parse_args
    from minigpt_ray.config.serve import ServeJobConfig
    from minigpt_ray.serving.app import app_builder

    serve_file = yaml.safe_load((REPO / "configs" / "serve_app.yaml").read_text())
    schema = ServeDeploySchema.model_validate(serve_file)  # Serve's own validation of `serve deploy` files
    app = schema.applications[0]
    assert app.import_path == "minigpt_ray.serving.app:app_builder" and app.route_prefix == "/"
    args = dict(app.args, model=tiny_zh_model["dir"])  # the shipped path exists only after the quickstart
    built = app_builder(args)
    assert type(built).__name__ == "Application"
    cfg = parse_args(
        ["--config", str(REPO / "configs" / "serve.yaml"), "--model", tiny_zh_model["dir"]], "t", ServeJobConfig
    )
    assert cfg.scaling.max_replicas == 2 and cfg.batching.max_batch_size == 8
