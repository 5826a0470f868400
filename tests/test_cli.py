"""The installed `minigpt` command: one entry point for every job, `--help` on each, `--print-config`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from minigpt_ray.config import SweepJobConfig, TrainJobConfig, from_dict

MINIGPT = Path(sys.executable).parent / "minigpt"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(MINIGPT), *args], cwd=REPO, capture_output=True, text=True, timeout=120)


HELP_WORDS = {"finetune": "DeepSpeed ZeRO stage", "sweep": "NSGA-II", "serve": "autoscaler", "export": "GGUF",
              "pipeline": "--stages"}  # fmt: skip


@pytest.mark.parametrize("job, words", list(HELP_WORDS.items()))
def test_each_job_has_help(job, words):
    done = _run(job, "--help")
    assert done.returncode == 0 and words in done.stdout, done.stderr
    top = _run("--help")
    assert top.returncode == 0 and job in top.stdout


def test_print_config_is_a_valid_config_file(tmp_path):
    done = _run("finetune", "--config", "configs/pretrain.yaml", "--max-steps", "70", "--print-config")
    assert done.returncode == 0, done.stderr
    cfg = from_dict(yaml.safe_load(done.stdout), TrainJobConfig).validate()
    assert cfg.train.max_steps == 70 and cfg.model.name == "gpt-nano"  # the YAML, overridden by the flag
    (tmp_path / "resolved.yaml").write_text(done.stdout)
    again = _run("finetune", "--config", str(tmp_path / "resolved.yaml"), "--print-config")
    assert again.stdout == done.stdout
    sweep = _run("sweep", "--config", "configs/sweep.yaml", "--print-config")
    assert from_dict(yaml.safe_load(sweep.stdout), SweepJobConfig).measure.eval_blocks == 64
    pipeline = _run("pipeline", "--config", "configs/pipeline.yaml", "--print-config")
    assert pipeline.returncode == 0 and set(yaml.safe_load(pipeline.stdout)) >= {"pretrain", "finetune", "sweep"}


def test_bad_setting_is_one_line_and_exit_2():
    done = _run("serve", "--model", "/no/such/model")
    assert done.returncode == 2 and done.stderr.strip() == "error: model: directory /no/such/model does not exist"
