"""The training loss of a causal LM, computed without materialising its [tokens, vocab] logits. Plain PyTorch.

HF's `model(input_ids, labels=...)` builds the full logits, upcasts them to fp32 and runs cross-entropy over them:
for a mini GPT that tensor (4,096 tokens x 4k vocab = 16M floats per micro-batch), its log-softmax backward and the
casts and fills around them were ~25% of a CPU bf16 step (profiled), and they do not get faster in bf16.
`ChunkedLinearCrossEntropy` runs the LM-head matmul, log-softmax and the gradients for a few hundred rows at a time
while they sit in cache (the technique of Liger-Kernel's fused linear cross-entropy, here in plain PyTorch so it
runs on CPU and GPU alike).
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100
# The output embedding is used as a plain [vocab, hidden] matrix with no bias, softcapping or logit scaling here.
FUSED_LOSS_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})
# Rows per chunk so one chunk's fp32 logits stay ~4 MiB (256 rows at a 4k vocab; measured best of 256/512/1024).
CHUNK_ELEMENTS = 2**20


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of `hidden @ weight.T` against `targets`, rows with IGNORE_INDEX left out.

    The gradients are computed in the forward, chunk by chunk (each chunk's logits are needed for both), and only
    scaled in the backward; under no_grad nothing beyond the loss is computed. Matmuls run in `compute_dtype`
    (bf16 under autocast), log-softmax and the weight gradient accumulate in fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk_rows):
        n_targets = (targets != IGNORE_INDEX).sum()
        denominator = n_targets.clamp(min=1).float()
        w = weight.detach().to(compute_dtype)
        h = hidden.detach().to(compute_dtype)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], chunk_rows):
            h_chunk, t_chunk = h[start : start + chunk_rows], targets[start : start + chunk_rows]
            logits = (h_chunk @ w.t()).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            valid = t_chunk != IGNORE_INDEX
            safe_targets = t_chunk.clamp(min=0)
            target_logits = logits.gather(1, safe_targets[:, None]).squeeze(1)
            total += torch.where(valid, log_norm - target_logits, 0.0).sum()
            if need_grad:
                # d(mean CE)/d(logits) = (softmax - onehot) / n_targets, zero on ignored rows; reuses `logits`.
                grad_logits = logits.sub_(log_norm[:, None]).exp_()
                grad_logits.scatter_add_(1, safe_targets[:, None], torch.full_like(log_norm, -1.0)[:, None])
                grad_logits.mul_((valid.float() / denominator)[:, None])
                grad_logits = grad_logits.to(compute_dtype)
                grad_hidden[start : start + chunk_rows] = grad_logits @ w
                grad_weight += grad_logits.t() @ h_chunk
        keep_for_backward(ctx, need_grad, grad_hidden, grad_weight, hidden, weight)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_loss):
        return *scaled_grads(ctx, grad_loss), None, None, None


def keep_for_backward(ctx, need_grad: bool, grad_hidden, grad_weight, hidden, weight) -> None:
    """What a chunked loss's forward leaves its backward: the gradients it computed and the inputs' dtypes."""
    if need_grad:
        ctx.save_for_backward(grad_hidden, grad_weight)
    ctx.dtypes = (hidden.dtype, weight.dtype)


def scaled_grads(ctx, grad_loss) -> tuple:
    """The (hidden, weight) gradients a chunked forward computed, scaled by the loss's incoming gradient."""
    grad_hidden, grad_weight = ctx.saved_tensors
    hidden_dtype, weight_dtype = ctx.dtypes
    return (grad_hidden * grad_loss).to(hidden_dtype), (grad_weight * grad_loss).to(weight_dtype)


def supports_fused_loss(model: nn.Module) -> bool:
    """True for the architectures whose logits are exactly `decoder output @ output_embedding.weight.T`."""
    head = model.get_output_embeddings()
    return (
        getattr(model.config, "model_type", None) in FUSED_LOSS_MODEL_TYPES
        and isinstance(head, nn.Linear)
        and head.bias is None
    )


def fused_causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, decoder=None) -> torch.Tensor:
    """The same mean next-token loss as `model(input_ids, labels=labels).loss`: position t predicts labels[t+1].
    `decoder` replaces `model.base_model` as the callable that maps ids to hidden states (e.g. a compiled one)."""
    decoder = decoder or model.base_model
    hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:].reshape(-1)
    weight = model.get_output_embeddings().weight
    compute_dtype = (
        torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
    )
    chunk_rows = max(16, CHUNK_ELEMENTS // weight.shape[0])
    return ChunkedLinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets, compute_dtype, chunk_rows
    )


def use_training_loss(model: nn.Module, fused: bool, compile: bool, teacher=None) -> None:
    """Route `model(input_ids=..., labels=...)` (what the DeepSpeed engine calls in training) through the fused loss
    and/or torch.compile, and through the distillation loss when `teacher` = (teacher model, alpha, temperature) is
    given; calls without labels (evaluation, generation) keep the model's own eager forward.

    The forward is replaced on this instance only, as accelerate does for autocast: the module tree, state dict keys
    and DeepSpeed checkpoints stay exactly the HF model's. fused needs an architecture in FUSED_LOSS_MODEL_TYPES and
    no ZeRO-3 (whose hooks gather a parameter only inside its own module's forward; the caller checks that)."""
    for checked in (model, teacher[0]) if teacher else (model,):
        if fused and not supports_fused_loss(checked):
            raise ValueError(f"fused loss does not support model type {checked.config.model_type!r}")
    if not (fused or compile or teacher):
        return
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from minigpt_ray.modeling.distill import distill_loss  # imports this module: a top-level import would cycle

    eager_forward = model.forward
    training_call = model.base_model.forward if fused else eager_forward
    training_call = torch.compile(training_call) if compile else training_call

    def forward(input_ids=None, labels=None, **kwargs):
        if labels is None or kwargs:
            return eager_forward(input_ids=input_ids, labels=labels, **kwargs)
        if teacher:
            loss = distill_loss(model, teacher[0], input_ids, labels, teacher[1], teacher[2], fused, training_call)
            return CausalLMOutputWithPast(loss=loss)
        if fused:
            return CausalLMOutputWithPast(loss=fused_causal_lm_loss(model, input_ids, labels, decoder=training_call))
        return training_call(input_ids=input_ids, labels=labels, use_cache=False)

    model.forward = forward
