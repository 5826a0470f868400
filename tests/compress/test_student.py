"""Distilled students as compression candidates, no cluster: a student built, distilled, quantized, saved and
measured like any candidate, smaller than its teacher and better than the same student before distillation."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from minigpt_ray.compress import CandidateError, CandidateSpec, load_candidate, make_candidate
from minigpt_ray.compress.distill import StudentTraining, new_student
from minigpt_ray.modeling.evaluate import perplexity
from minigpt_ray.modeling.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def teacher(tiny_trained):
    model = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"]).eval()
    return model, load_tokenizer(tiny_trained["dir"]), tiny_trained["data"]


def test_a_distilled_student_is_a_candidate_like_any_other(teacher, tmp_path):
    model, tokenizer, data = teacher
    spec = CandidateSpec(quant="int8-weight", student_layers=1, distill_steps=40)
    untrained, layers = new_student(model, spec, seed=0)
    assert layers == [0] and untrained.config.num_hidden_layers == 1
    before = perplexity(untrained, data.eval_blocks)
    base = make_candidate(model, tokenizer, CandidateSpec(), tmp_path / "base", data)
    metrics = make_candidate(model, tokenizer, spec, tmp_path / "student", data, students=StudentTraining(lr=3e-3))
    assert metrics["label"] == "distill 1L 40 steps + int8-weight"
    assert metrics["params"] < 0.85 * base["params"] and metrics["weights_bytes"] < base["weights_bytes"]
    assert metrics["perplexity"] < before  # distillation trained it
    student, _, manifest = load_candidate(tmp_path / "student")
    assert manifest["format"] == "int8-weight" and student.config.num_hidden_layers == 1
    assert manifest["student"]["init_from_layers"] == [0] and len(manifest["student"]["distill_losses"]) == 40
    assert perplexity(student, data.eval_blocks) == pytest.approx(metrics["perplexity"], rel=1e-9)


def test_student_settings_are_checked_and_normalized(teacher):
    model, _, _ = teacher
    assert CandidateSpec(student_hidden_size=32, distill_steps=5).normalized() == CandidateSpec()
    with pytest.raises(CandidateError, match=r"^distill_steps: a student needs at least 1"):
        CandidateSpec(student_layers=1).normalized()
    with pytest.raises(CandidateError, match=r"^student_layers: 2 is not smaller than the model's 2 layers"):
        new_student(model, CandidateSpec(student_layers=2, distill_steps=1), seed=0)
    narrow, layers = new_student(model, CandidateSpec(student_layers=2, student_hidden_size=32, distill_steps=1), 0)
    assert layers == [] and narrow.config.hidden_size == 32  # another width: random init
