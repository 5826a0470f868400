"""Knowledge distillation in plain PyTorch: the loss, and students derived from a teacher.

Loss (Hinton et al. 2015; DistilBERT/DistilGPT2; torchtune's KD recipe), per predicted token and averaged over them:
    (1 - alpha) * CE(student, label) + alpha * temperature^2 * KL(softmax(teacher / T) || softmax(student / T))
The temperature^2 factor keeps the soft term's gradient on the scale of the hard term's as T changes.
`ChunkedDistillLoss` computes it the way `ChunkedLinearCrossEntropy` computes plain cross-entropy: student and
teacher logits are made a few hundred rows at a time from their hidden states, so neither [tokens, vocab] tensor
exists in full; `distill_loss_from_logits` is the direct computation (models the chunked path does not cover, and
the tests' reference).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minigpt_ray.modeling.loss import CHUNK_ELEMENTS, IGNORE_INDEX, keep_for_backward, scaled_grads


def distill_loss_from_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    """The distillation loss from full [B, T, V] logits; position t predicts labels[t + 1]."""
    vocab = student_logits.shape[-1]
    student = student_logits[:, :-1].float().reshape(-1, vocab)
    teacher = teacher_logits[:, :-1].float().reshape(-1, vocab)
    targets = labels[:, 1:].reshape(-1)
    valid = targets != IGNORE_INDEX
    hard = F.cross_entropy(student, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    soft_student = F.log_softmax(student / temperature, dim=-1)
    soft_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = (soft_teacher.exp() * (soft_teacher - soft_student)).sum(dim=-1)
    soft = torch.where(valid, kl, 0.0).sum() * temperature**2
    return ((1 - alpha) * hard + alpha * soft) / valid.sum().clamp(min=1)


class ChunkedDistillLoss(torch.autograd.Function):
    """The distillation loss of `hidden @ weight.T` (student) against `teacher_hidden @ teacher_weight.T` and
    `targets`, chunk by chunk; gradients (student only) are computed in the forward and scaled in the backward.
    d loss / d student logits = [(1 - alpha) (softmax(z) - onehot) + alpha T (softmax(z / T) - p_teacher)] / n."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, teacher_hidden, teacher_weight, compute_dtype, settings):
        alpha, temperature, chunk_rows = settings
        denominator = (targets != IGNORE_INDEX).sum().clamp(min=1).float()
        w, h = weight.detach().to(compute_dtype), hidden.detach().to(compute_dtype)
        teacher_w, teacher_h = teacher_weight.detach().to(compute_dtype), teacher_hidden.detach().to(compute_dtype)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = (h[rows] @ w.t()).float()
            teacher_log_soft = F.log_softmax((teacher_h[rows] @ teacher_w.t()).float() / temperature, dim=-1)
            loss_sum, grad_logits = _chunk_loss_and_grad(logits, teacher_log_soft, targets[rows], alpha, temperature)
            total += loss_sum
            if need_grad:
                grad_logits = grad_logits.div_(denominator).to(compute_dtype)
                grad_hidden[rows] = grad_logits @ w
                grad_weight += grad_logits.t() @ h[rows]
        keep_for_backward(ctx, need_grad, grad_hidden, grad_weight, hidden, weight)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_loss):
        return *scaled_grads(ctx, grad_loss), None, None, None, None, None


def _chunk_loss_and_grad(logits, teacher_log_soft, targets, alpha: float, temperature: float):
    """(summed loss, d summed loss / d logits) of one chunk of fp32 student logits [R, V], given the teacher's
    log-probabilities at the temperature."""
    valid = targets != IGNORE_INDEX
    safe_targets = targets.clamp(min=0)
    log_probs = F.log_softmax(logits, dim=-1)
    hard = -log_probs.gather(1, safe_targets[:, None]).squeeze(1)
    soft_log_probs = F.log_softmax(logits / temperature, dim=-1)
    teacher_soft = teacher_log_soft.exp()
    kl = (teacher_soft * (teacher_log_soft - soft_log_probs)).sum(dim=-1)
    per_row = (1 - alpha) * hard + alpha * temperature**2 * kl
    loss_sum = torch.where(valid, per_row, 0.0).sum()
    grad = log_probs.exp_().mul_(1 - alpha)
    grad.scatter_add_(1, safe_targets[:, None], torch.full_like(hard, -(1 - alpha))[:, None])
    grad.add_(soft_log_probs.exp_().sub_(teacher_soft), alpha=alpha * temperature)
    return loss_sum, grad.mul_(valid.float()[:, None])


def chunked_distill_loss(student, teacher, input_ids, labels, alpha: float, temperature: float, decoder=None):
    """The distillation loss of two models whose logits are `decoder output @ output_embedding.T` (see
    `loss.supports_fused_loss`), without either model's full logits. The teacher runs under no_grad."""
    decoder = decoder or student.base_model
    hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    with torch.no_grad():
        teacher_hidden = teacher.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    weight = student.get_output_embeddings().weight
    device = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    chunk_rows = max(16, CHUNK_ELEMENTS // weight.shape[0])
    return ChunkedDistillLoss.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        labels[:, 1:].reshape(-1),
        teacher_hidden.reshape(-1, teacher_hidden.shape[-1]),
        teacher.get_output_embeddings().weight,
        compute_dtype,
        (alpha, temperature, chunk_rows),
    )


def distill_loss(student, teacher, input_ids, labels, alpha: float, temperature: float, fused: bool, call=None):
    """The distillation loss of a batch: chunked when `fused` (both models' logits are hidden @ head; `call` maps ids
    to the student's hidden states), else from both models' full logits (`call` gives the student's). The teacher
    runs under no_grad either way."""
    if fused:
        return chunked_distill_loss(student, teacher, input_ids, labels, alpha, temperature, call)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=input_ids, use_cache=False).logits
    logits = (call or student)(input_ids=input_ids, use_cache=False).logits
    return distill_loss_from_logits(logits, teacher_logits, labels, alpha, temperature)


def derive_student_config(teacher_config, layers: int, hidden_size: int = 0):
    """The teacher's architecture with `layers` decoder layers and, if given, another width: heads keep their
    size, the MLP and key/value heads scale with the width."""
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = layers
    if hidden_size and hidden_size != teacher_config.hidden_size:
        head_dim = teacher_config.hidden_size // teacher_config.num_attention_heads
        if hidden_size % head_dim:
            raise ValueError(f"must be a multiple of the teacher's head size {head_dim}, got {hidden_size}")
        scale = hidden_size / teacher_config.hidden_size
        config.hidden_size, config.num_attention_heads = hidden_size, hidden_size // head_dim
        if getattr(teacher_config, "num_key_value_heads", None):
            groups = teacher_config.num_attention_heads // teacher_config.num_key_value_heads
            config.num_key_value_heads = max(1, config.num_attention_heads // groups)
        if getattr(teacher_config, "intermediate_size", None):
            config.intermediate_size = max(32, round(teacher_config.intermediate_size * scale / 32) * 32)
        if getattr(teacher_config, "n_inner", None):
            config.n_inner = max(32, round(teacher_config.n_inner * scale / 32) * 32)
    return config


def teacher_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, starting at the first (every other one at half depth, as DistilGPT2)."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def decoder_layers_name(model: nn.Module) -> str:
    """The qualified name of the model's list of decoder layers (model.layers in Llama, transformer.h in GPT-2)."""
    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name
    raise ValueError(f"no list of {count} decoder layers in {type(model).__name__}")


def init_student_from_teacher(student: nn.Module, teacher: nn.Module) -> list[int]:
    """Copy the teacher's embeddings, norms, head and evenly spaced layers into a student of the same width.
    Returns the teacher layer each student layer came from."""
    layers = decoder_layers_name(student)
    mapping = teacher_layer_map(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    teacher_state, state = teacher.state_dict(), student.state_dict()
    for key in state:
        source = key
        if key.startswith(layers + "."):
            index, rest = key[len(layers) + 1 :].split(".", 1)
            source = f"{layers}.{mapping[int(index)]}.{rest}"
        state[key] = teacher_state[source].clone()
    student.load_state_dict(state)
    return mapping


@dataclass(frozen=True)
class DistillSpec:
    """What a training worker needs to run the teacher (it crosses the Ray boundary: plain values only)."""

    teacher: str
    """Absolute directory or hub id of the teacher."""
    alpha: float
    temperature: float


def load_teacher(spec: DistillSpec, device: torch.device, bf16: bool, attn_implementation: str = "sdpa"):
    """The frozen teacher for a worker: inference only, bf16 when the run computes in bf16, no gradients."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(
        spec.teacher,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        trust_remote_code=False,
        attn_implementation=attn_implementation,
    )
    return teacher.to(device).eval().requires_grad_(False)


def build_student(teacher_location: str, config, init_from_teacher: bool, seed: int):
    """A derived student, fp32: random init from `seed`, or started from the teacher when widths match.
    Returns (model, the teacher layer each student layer came from, or [] for random init)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_location, dtype=torch.float32)
    if not init_from_teacher or config.hidden_size != teacher.config.hidden_size:
        return student, []
    return student, init_student_from_teacher(student, teacher)
