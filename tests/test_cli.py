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
    race = _run("finetune", "--config", "configs/shakespeare.yaml", "--data", "a.txt", "--no-cache", "--print-config")
    resolved = from_dict(yaml.safe_load(race.stdout), TrainJobConfig).validate()  # the nanoGPT race's config
    assert resolved.data.sources == ["a.txt"] and resolved.data.no_cache and resolved.train.max_steps == 500


def test_bad_setting_is_one_line_and_exit_2():
    done = _run("serve", "--model", "/no/such/model")
    assert done.returncode == 2 and done.stderr.strip() == "error: model: directory /no/such/model does not exist"


def test_a_pipeline_whose_sweep_finds_no_winner_exits_3_with_one_line(tmp_path, monkeypatch, capsys):
    from minigpt_ray import cli
    from minigpt_ray.pipeline import run
    from minigpt_ray.sweep.pareto import NoWinnerError

    def no_winner(plan):
        raise NoWinnerError("winner: no candidate meets served size <= 0.001 MB; closest: int8-weight")

    monkeypatch.setattr(run, "run_pipeline", no_winner)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "stages": ["sweep"]}))
    config = ["pipeline", "--config", str(tmp_path / "p.yaml"), "--no-block"]
    monkeypatch.setattr(run, "plan_pipeline", lambda *a, **k: run.PipelinePlan(tmp_path / "out", ["sweep"], {}, []))
    assert cli.main(config) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: sweep.winner: no candidate meets served size <= 0.001 MB; closest: int8-weight"]
