"""Distillation as a Ray Train + DeepSpeed job: a student derived from a trained teacher beats its label-only twin
under ZeRO-2 (chunked loss) and ZeRO-3 (full logits), resumes mid-distillation, and exports like any run. The twin
(alpha 0: no teacher, so no chunked-or-full path to tell apart) is trained once, under ZeRO-2."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_run_config, train_tiny_model

from minigpt_ray.training.trainer import run_training


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A tiny Llama trained well past what the students reach in their 30 steps (600 steps, plain PyTorch) on the
    Shakespeare slice the runs read; its held-out documents are the runs' too (the split hashes each document)."""
    from minigpt_ray.data.corpora import source_documents

    text = "\n\n".join(d.text for d in source_documents("shakespeare", max_chars=150_000))
    texts = text.split("\n\n")  # paragraphs, as the runs split a .txt (the built-in corpus holds whole plays)
    return train_tiny_model(texts, tmp_path_factory.mktemp("teacher") / "model", steps=600)["dir"]


def distill_config(output, teacher: str, alpha: float, **train):
    cfg = tiny_run_config(output, max_steps=30, checkpoint_every=10, eval_every=30, eval_batches=0, **train)
    d = cfg.distill
    d.teacher, d.alpha, d.temperature, d.student_layers = teacher, alpha, 2.0, 1
    return cfg.validate()


@pytest.fixture(scope="module")
def twin(ray_cluster, teacher, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("twin")
    return run_training(distill_config(output, teacher, alpha=0.0, zero_stage=2)) | {"output": output}


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_distilled_student_beats_its_label_only_twin(ray_cluster, teacher, twin, tmp_path, monkeypatch, zero_stage):
    if zero_stage == 3:  # and a crash mid-distillation: the run resumes from its step-10 checkpoint
        monkeypatch.setenv("MINIGPT_RAY_FAULT", f"crash-at-step:12:{tmp_path / 'crashed'}")
    student = run_training(distill_config(tmp_path / "kd", teacher, alpha=0.5, zero_stage=zero_stage))
    # On the whole held-out set; the runs are deterministic (same data order, same seed), so the margin is real.
    losses = student["final_val_loss"], twin["final_val_loss"]
    assert losses[0] < losses[1] - 0.005, losses
    assert student["fused_loss"] == (zero_stage < 3)  # ZeRO-3 takes the full-logits path
    if zero_stage == 3:
        assert (tmp_path / "crashed").read_text() == "12" and student["resumed_from"] == [10]
        assert student["steps"] == 30
    # Both start from the same student: the teacher's embeddings and its first layer, written once at the start.
    config = json.loads((tmp_path / "kd" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["hidden_size"] == 64
    assert json.loads((tmp_path / "kd" / "student_init" / "config.json").read_text())["num_hidden_layers"] == 1
    assert (tmp_path / "kd" / "model" / "tokenizer.json").read_text() == (
        twin["output"] / "model" / "tokenizer.json"
    ).read_text()
