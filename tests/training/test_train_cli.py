"""The job's command line: every bad input ends in one line naming the field or file, exit 2, before any worker
starts, with nothing written to --output."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from minigpt_ray import cli


def finetune_main(argv):
    return cli.main(["finetune", *argv])


TINY = ["--model", "gpt-nano", "--vocab-size", "512", "--block-size", "64", "--max-steps", "5", "--warmup-steps", "1"]


def _bad_inputs(tmp: Path) -> dict:
    (tmp / "empty.txt").write_text("\n\n")
    (tmp / "latin1.txt").write_bytes("naïve café, déjà vu\n".encode("latin-1"))
    (tmp / "short.txt").write_text("Just a few words.\n")
    (tmp / "nomodel").mkdir()
    (tmp / "noweights").mkdir()
    (tmp / "noweights" / "config.json").write_text('{"model_type": "llama"}')
    (tmp / "sci.yaml").write_text("train: {lr: 0e-3, grad_clip: 1e-3}\n")  # YAML 1.1 reads both as strings
    return {
        "missing corpus": (["--data", str(tmp / "nope.txt")], "data.sources: ", "nope.txt"),
        "empty corpus": (["--data", str(tmp / "empty.txt")], "data.sources: ", "is empty"),
        "non-utf8 corpus": (["--data", str(tmp / "latin1.txt")], "data.sources: ", "not UTF-8"),
        "shorter than a block": (["--data", str(tmp / "short.txt")], "data.sources: ", "fewer than one block"),
        "unknown preset": (["--model", "gpt-nanoo"], "model.name: ", "did you mean gpt-nano"),
        "missing model dir": (["--model", str(tmp / "no" / "model")], "model.name: ", "does not exist"),
        "dir without config": (["--model", str(tmp / "nomodel")], "model.name: ", "has no config.json"),
        "zero stage 4": (["--zero-stage", "4"], "train.zero_stage: ", "got 4"),
        "lr 0": (["--lr", "0"], "train.lr: ", "must be a finite number > 0"),
        "lr inf": (["--lr", "inf"], "train.lr: ", "must be a finite number > 0"),
        "grad_clip nan": (["--grad-clip", "nan"], "train.grad_clip: ", "must be finite"),
        "run name a path": (["--run-name", "../elsewhere"], "run_name: ", "no path separators"),
        "output a file": (["--output", str(tmp / "empty.txt")], "output: ", "is a file"),
        "yaml 1e-3 is a number": (["--config", str(tmp / "sci.yaml")], "train.lr: ", "got 0.0"),
        "model dir without weights": (["--model", str(tmp / "noweights")], "model.name: ", "has no weights"),
        "batch 0": (["--micro-batch-size", "0"], "train.micro_batch_size: ", "must be >= 1"),
        "bad yaml key": (["--config", str(tmp / "bad.yaml")], "train.zero: ", "unknown setting"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing corpus",
        "empty corpus",
        "non-utf8 corpus",
        "shorter than a block",
        "unknown preset",
        "missing model dir",
        "dir without config",
        "zero stage 4",
        "lr 0",
        "lr inf",
        "grad_clip nan",
        "run name a path",
        "output a file",
        "yaml 1e-3 is a number",
        "model dir without weights",
        "batch 0",
        "bad yaml key",
    ],
)
def test_bad_input_one_line_and_nothing_written(case, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("train: {zero: 2}\n")
    argv, field, detail = _bad_inputs(tmp_path)[case]
    output = tmp_path / "out"
    base = TINY + ["--data", "shakespeare", "--max-chars-per-source", "100000", "--output", str(output)]
    assert finetune_main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: " + field) and detail in err[0]
    assert not output.exists()


def test_help_explains_each_required_flag():
    out = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "finetune.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag, words in {
        "--model": "preset",
        "--data": "built-in corpora",
        "--output": "Output directory",
        "--num-workers": "Ray Train workers",
        "--zero-stage": "ZeRO stage",
        "--precision": "bf16",
        "--max-steps": "Optimizer steps",
        "--config": "YAML",
    }.items():
        line = out[out.index("\n  " + flag + " ") :][:400]  # the option's own entry, not the usage line
        assert words in line, (flag, line)
