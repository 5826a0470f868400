"""Distillation settings resolved before any worker starts (no Ray): the student shares the teacher's tokenizer, a
student with another vocabulary is refused, derived students and bad shapes fail in one line."""

from __future__ import annotations

import pytest
from helpers import tiny_run_config

from minigpt_ray import cli
from minigpt_ray.config import ConfigError
from minigpt_ray.training.prepare import prepare_run, student_dir


def distill(cfg, teacher: str, **settings):
    cfg.distill.teacher = teacher
    for key, value in settings.items():
        setattr(cfg.distill, key, value)
    return cfg.validate()


def test_a_preset_student_takes_the_teachers_tokenizer(tiny_trained, tmp_path):
    cfg = distill(tiny_run_config(tmp_path / "run"), tiny_trained["dir"], alpha=0.5)
    prepared = prepare_run(cfg)
    teacher_config = prepared.teacher.config
    assert prepared.source.name == "gpt-nano" and prepared.model_config.hidden_size == 128
    assert prepared.model_config.vocab_size == teacher_config.vocab_size  # logits line up token by token
    assert prepared.tokenizer.get_vocab() == prepared.teacher.tokenizer().get_vocab()
    spec = prepared.worker_config(2).distill
    assert (spec.teacher, spec.alpha, spec.temperature) == (prepared.teacher.location, 0.5, 2.0)
    cfg.distill.alpha = 0.0  # the label-only twin: same student and tokenizer, no teacher in the workers
    assert prepare_run(cfg).worker_config(2).distill is None


def test_a_derived_student_is_the_teachers_architecture_at_another_depth(tiny_trained, tmp_path):
    prepared = prepare_run(distill(tiny_run_config(tmp_path / "run"), tiny_trained["dir"], student_layers=1))
    assert prepared.derived_student and prepared.model_config.num_hidden_layers == 1
    assert prepared.worker_config(2).model.pretrained == str(student_dir(str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()  # written by the job once everything is checked


def test_a_student_with_another_vocabulary_is_refused(tiny_trained, tiny_zh_model, tmp_path):
    cfg = tiny_run_config(tmp_path / "run")
    cfg.model.name = tiny_zh_model["dir"]
    with pytest.raises(ConfigError, match=r"^distill.teacher: .* has another vocabulary than the student"):
        prepare_run(distill(cfg, tiny_trained["dir"]))


@pytest.mark.parametrize(
    "argv, error",
    [
        (["--student-layers", "1"], "error: distill.student_layers: needs distill.teacher"),
        (["--teacher", "TEACHER", "--student-layers", "1", "--student-hidden-size", "40"], "multiple of the teacher"),
        (["--teacher", "TEACHER", "--distill-alpha", "1.5"], "error: distill.alpha: must be in [0, 1]"),
        (["--teacher", "TEACHER", "--distill-temperature", "0"], "error: distill.temperature: must be > 0"),
        (["--teacher", "gpt-nano"], "error: distill.teacher: gpt-nano is a preset (random weights)"),
    ],
)
def test_bad_distillation_settings_stop_in_one_line(argv, error, tiny_trained, tmp_path, capsys):
    argv = [tiny_trained["dir"] if a == "TEACHER" else a for a in argv]
    args = ["finetune", "--output", str(tmp_path / "run"), "--data", "shakespeare"]
    assert cli.main([*args, "--max-chars-per-source", "20000", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and error in err[0], err
    assert not (tmp_path / "run").exists()
