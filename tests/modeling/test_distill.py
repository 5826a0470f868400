"""Knowledge distillation, plain PyTorch: the chunked loss against the direct computation (values and gradients),
students derived from a teacher, and a student initialised from the teacher's layers."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama_config
from transformers import AutoModelForCausalLM

from minigpt_ray.modeling.distill import (
    chunked_distill_loss,
    derive_student_config,
    distill_loss_from_logits,
    init_student_from_teacher,
    teacher_layer_map,
)
from minigpt_ray.modeling.loss import IGNORE_INDEX


def pair(vocab: int = 96):
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_llama_config(vocab, num_hidden_layers=4)).eval()
    student = AutoModelForCausalLM.from_config(tiny_llama_config(vocab, hidden_size=32, intermediate_size=64))
    return teacher, student


def test_by_hand_on_one_token():
    """One predicted token: the KL term is T^2 KL(p_t || p_s) at temperature T, the hard term plain CE."""
    student = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]]])
    teacher = torch.tensor([[[0.2, 1.0, 3.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 2]])
    t = 2.0
    p_t, p_s = torch.softmax(teacher[0, 0] / t, -1), torch.softmax(student[0, 0] / t, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum()
    ce = -torch.log_softmax(student[0, 0], -1)[2]
    expected = 0.3 * ce + 0.7 * t**2 * kl
    assert distill_loss_from_logits(student, teacher, labels, alpha=0.7, temperature=t).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    assert distill_loss_from_logits(student, teacher, labels, 0.0, t).item() == pytest.approx(ce.item(), rel=1e-6)


@pytest.mark.parametrize("alpha, temperature", [(0.5, 2.0), (1.0, 1.0), (0.0, 4.0)])
def test_chunked_matches_direct_values_and_gradients(alpha, temperature, monkeypatch):
    import minigpt_ray.modeling.distill as distill

    monkeypatch.setattr(distill, "CHUNK_ELEMENTS", 96 * 20)  # 20 rows per chunk: several chunks and a ragged one
    teacher, student = pair()
    ids = torch.randint(0, 96, (3, 17), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, 5:9] = IGNORE_INDEX  # masked positions count in neither term
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids).logits
    direct = distill_loss_from_logits(student(input_ids=ids).logits, teacher_logits, labels, alpha, temperature)
    direct.backward()
    expected = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    chunked = chunked_distill_loss(student, teacher, ids, labels, alpha, temperature)
    chunked.backward()
    assert chunked.item() == pytest.approx(direct.item(), rel=1e-5)
    for name, param in student.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is only read


def test_a_student_that_copies_its_teacher_has_no_soft_loss():
    teacher, _ = pair()
    twin = AutoModelForCausalLM.from_config(teacher.config)
    twin.load_state_dict(teacher.state_dict())
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))
    loss = chunked_distill_loss(twin, teacher, ids, ids, alpha=1.0, temperature=2.0)
    assert abs(loss.item()) < 1e-5


def test_derived_student_shapes():
    teacher_config = tiny_llama_config(96, num_hidden_layers=4, num_key_value_heads=2)
    half = derive_student_config(teacher_config, layers=2)
    assert (half.num_hidden_layers, half.hidden_size, half.intermediate_size) == (2, 64, 128)
    narrow = derive_student_config(teacher_config, layers=2, hidden_size=32)
    assert (narrow.hidden_size, narrow.num_attention_heads, narrow.num_key_value_heads) == (32, 2, 1)
    assert narrow.intermediate_size == 64 and teacher_config.num_hidden_layers == 4  # the teacher's is untouched
    with pytest.raises(ValueError, match="multiple of the teacher's head size 16"):
        derive_student_config(teacher_config, layers=2, hidden_size=40)


def test_student_starts_from_every_other_teacher_layer():
    teacher, _ = pair()
    student = AutoModelForCausalLM.from_config(derive_student_config(teacher.config, layers=2))
    assert init_student_from_teacher(student, teacher) == [0, 2] == teacher_layer_map(4, 2)
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    torch.testing.assert_close(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    torch.testing.assert_close(student.model.norm.weight, teacher.model.norm.weight)
    assert teacher_layer_map(12, 4) == [0, 3, 6, 9]
