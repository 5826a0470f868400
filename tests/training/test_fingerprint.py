"""Resuming only what matches: a run's fingerprint is recorded beside its checkpoints and checked (no cluster)."""

from __future__ import annotations

import json

import pytest

from minigpt_ray.config import ConfigError
from minigpt_ray.training.fingerprint import FINGERPRINT_FILE, check_or_record

RUN = {
    "model": "gpt-nano",
    "architecture": {"hidden_size": 128, "num_hidden_layers": 4},
    "tokenizer": "0123abcd",
    "data": {"sources": ["shakespeare"], "stats": {"tokens": {"train": 1000, "val": 50}}},
    "block_size": 64,
    "zero_stage": 2,
    "num_workers": 2,
    "precision": "bf16-mixed",
}


def test_a_new_run_is_recorded_and_the_same_run_resumes(tmp_path):
    check_or_record(tmp_path, RUN, "runs/x")
    assert json.loads((tmp_path / FINGERPRINT_FILE).read_text()) == RUN
    check_or_record(tmp_path, dict(RUN), "runs/x")  # same identity (max_steps, lr, eval are not part of it)


@pytest.mark.parametrize(
    "change",
    [
        {"zero_stage": 3},
        {"num_workers": 4},
        {"precision": "fp32"},
        {"block_size": 128},
        {"tokenizer": "ffff0000"},
        {"architecture": {"hidden_size": 256, "num_hidden_layers": 4}},
        {"data": {"sources": ["zh-news"], "stats": {"tokens": {"train": 1000, "val": 50}}}},
    ],
)
def test_a_different_run_is_refused_naming_what_changed(tmp_path, change):
    check_or_record(tmp_path, RUN, "runs/x")
    with pytest.raises(
        ConfigError, match=rf"^output: runs/x holds checkpoints of a different run \({next(iter(change))}"
    ):
        check_or_record(tmp_path, RUN | change, "runs/x")
    assert json.loads((tmp_path / FINGERPRINT_FILE).read_text()) == RUN  # the record is not overwritten
