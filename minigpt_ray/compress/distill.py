"""A distilled student as a compression candidate: a smaller model of the same family, trained in the sweep trial's
own process on the model being compressed (its teacher), then pruned and quantized like any other candidate.

The trial trains it in-process rather than as a nested Ray Train run: a sweep's students are small and train for
hundreds of steps, where a Ray Train worker group would add its start-up (seconds to tens of seconds) to every
candidate and need CPUs beyond the trial's own, which on a small cluster leaves trials and workers waiting on each
other. The loss is the training job's (`modeling.distill`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from minigpt_ray.compress.finetune import short_finetune
from minigpt_ray.config.compress import CandidateError, CandidateSpec
from minigpt_ray.modeling.distill import derive_student_config, distill_loss, init_student_from_teacher
from minigpt_ray.modeling.loss import supports_fused_loss


@dataclass(frozen=True)
class StudentTraining:
    """How every student of a sweep is trained (the sweep's settings; the depth, width and steps are per candidate)."""

    alpha: float = 0.5
    temperature: float = 2.0
    lr: float = 1e-3
    batch_size: int = 8


def new_student(teacher, spec: CandidateSpec, seed: int) -> tuple[torch.nn.Module, list[int]]:
    """The candidate's student, untrained: the teacher's architecture at the spec's depth and width, started from
    the teacher's evenly spaced layers when the width is the teacher's. Returns (student, teacher layers used)."""
    try:
        config = derive_student_config(teacher.config, spec.student_layers, spec.student_hidden_size)
    except (ValueError, AttributeError) as err:
        raise CandidateError(f"student_hidden_size: {err}") from None
    if spec.student_layers >= teacher.config.num_hidden_layers and config.hidden_size == teacher.config.hidden_size:
        raise CandidateError(
            f"student_layers: {spec.student_layers} is not smaller than the model's "
            f"{teacher.config.num_hidden_layers} layers at the same width"
        )
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    same_width = config.hidden_size == teacher.config.hidden_size
    return student.eval(), init_student_from_teacher(student, teacher) if same_width else []


def train_student(
    student, teacher, train_blocks: torch.Tensor, steps: int, training: StudentTraining, seed: int = 0
) -> list[float]:
    """Distil `teacher` into `student` for `steps` steps (the short fine-tune with a 10% warm-up). Returns the loss
    of every step."""
    teacher.eval()
    fused = supports_fused_loss(student) and supports_fused_loss(teacher)
    return short_finetune(
        student,
        train_blocks,
        steps,
        lambda batch: distill_loss(student, teacher, batch, batch, training.alpha, training.temperature, fused),
        training.lr,
        training.batch_size,
        seed,
        warmup_steps=max(1, steps // 10),
    )
