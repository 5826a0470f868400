"""The README's commands work as written: every shell block marked `<!-- runnable -->` runs literally, from a shell
that has activated nothing, in a copy of the repository (so a user's runs/ stays untouched), inside fresh PID and
network namespaces (so its `ray start` / `ray stop` never meet the test session's own Ray)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from helpers import REPO

MARK = "<!-- runnable -->"


def runnable_blocks(markdown: str) -> list[str]:
    return re.findall(re.escape(MARK) + r"\s*```bash\n(.*?)```", markdown, re.S)


def _clean_env() -> dict:
    """A new terminal: no virtualenv on PATH, no Ray or project settings inherited from the test session."""
    venv_bin = str(REPO / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MINIGPT_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def test_readme_marks_the_cluster_walkthrough_runnable():
    blocks = runnable_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert any("ray job submit" in block and "ray start" in block for block in blocks)


def test_readme_runnable_blocks_work_as_written(tmp_path, spawns_ray):
    copy = tmp_path / "minigpt_ray"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.egg-info"))
    (copy / ".venv").symlink_to(REPO / ".venv")
    for number, block in enumerate(runnable_blocks((REPO / "README.md").read_text(encoding="utf-8")), start=1):
        done = subprocess.run(
            ["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c",
             'ip link set lo up && exec bash -euo pipefail -c "$0"', block],
            cwd=copy, env=_clean_env(), capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        log = done.stdout + done.stderr
        assert done.returncode == 0, f"README block {number} failed:\n{block}\n{log[-4000:]}"
        if "ray job submit" in block:
            assert "succeeded" in log and "ModuleNotFoundError" not in log, log[-4000:]
            steps = re.search(r"--max-steps (\d+)", block).group(1)
            assert log.count(f"step {steps}/{steps}") == 1, log[-4000:]  # each worker line reaches the job log once
            assert (copy / "runs" / "pretrain" / "model" / "model.safetensors").is_file()
