"""Structured pruning: remove whole FFN neurons and attention heads, giving a genuinely smaller model.

The same number of neurons (and heads) is removed from every layer so the result is still described by a standard
HF config (intermediate_size / n_inner, num_attention_heads with an explicit head_dim) and loads with
AutoModelForCausalLM. Importance is activation-aware like Wanda: for an input channel c of the layer that consumes
the neuron/head outputs (down_proj, o_proj, GPT-2's mlp.c_proj), ||X_c|| x ||W[:, c]||; summed over a head's
channels. GPT-2 ties its head size to n_embd / n_head, so only its FFN neurons are removed.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from minigpt_ray.compress.layers import collect_input_norms, weight_rows


def _channel_importance(consumer: nn.Module, norm: torch.Tensor | None) -> torch.Tensor:
    w = weight_rows(consumer).detach().float()  # [out, in]; column c is input channel c
    column_norms = w.norm(dim=0)
    return column_norms * norm if norm is not None else column_norms


def _keep_count(total: int, fraction: float) -> int:
    return max(1, total - int(round(fraction * total)))


def _group_count(cfg, fraction: float) -> int:
    """Key/value head groups kept: the largest count <= the target whose query heads divide hidden_size
    (transformers' Llama config demands hidden_size % num_attention_heads == 0 even with an explicit head_dim)."""
    kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
    per_group = cfg.num_attention_heads // kv_heads
    target = _keep_count(kv_heads, fraction)
    return max(g for g in range(1, target + 1) if cfg.hidden_size % (g * per_group) == 0)


def _top_indices(importance: torch.Tensor, keep: int) -> torch.Tensor:
    return torch.sort(torch.argsort(importance, descending=True, stable=True)[:keep]).values


def _linear_rows(layer: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(layer.in_features, len(idx), bias=layer.bias is not None, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[idx])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[idx])
    return new


def _linear_cols(layer: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), layer.out_features, bias=layer.bias is not None, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[:, idx])
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def _norms(model, consumers: dict[str, nn.Module], calib_blocks):
    if calib_blocks is None or len(calib_blocks) == 0:
        return {name: None for name in consumers}
    return collect_input_norms(model, consumers, calib_blocks)


def prune_structured(model: nn.Module, fraction: float, calib_blocks: torch.Tensor | None = None) -> dict:
    """Remove `fraction` of FFN neurons (and of attention heads where the architecture allows). Returns a summary."""
    kind = model.config.model_type
    if kind == "gpt2":
        return _prune_gpt2(model, fraction, calib_blocks)
    if hasattr(model, "model") and hasattr(model.model, "layers") and hasattr(model.model.layers[0], "mlp"):
        return _prune_llama_like(model, fraction, calib_blocks)
    raise ValueError(f"structured pruning supports Llama-style and GPT-2 models, not model_type {kind!r}")


def _prune_llama_like(model, fraction: float, calib_blocks) -> dict:
    """FFN neurons, and attention heads by whole key/value groups: with grouped-query attention each key/value head
    serves `per_group` query heads, so a group (its query heads, its key and value rows) is kept or removed together
    and the ratio of query to key/value heads stays the one the architecture was trained with."""
    cfg = model.config
    layers = model.model.layers
    kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
    per_group = cfg.num_attention_heads // kv_heads
    consumers = {f"{i}.down": layer.mlp.down_proj for i, layer in enumerate(layers)}
    consumers |= {f"{i}.o": layer.self_attn.o_proj for i, layer in enumerate(layers)}
    norms = _norms(model, consumers, calib_blocks)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    keep_ffn = _keep_count(cfg.intermediate_size, fraction)
    keep_groups = _group_count(cfg, fraction)
    for i, layer in enumerate(layers):
        mlp = layer.mlp
        idx = _top_indices(_channel_importance(mlp.down_proj, norms[f"{i}.down"]), keep_ffn)
        mlp.gate_proj, mlp.up_proj = _linear_rows(mlp.gate_proj, idx), _linear_rows(mlp.up_proj, idx)
        mlp.down_proj = _linear_cols(mlp.down_proj, idx)
        if keep_groups < kv_heads:
            attn = layer.self_attn
            channel = _channel_importance(attn.o_proj, norms[f"{i}.o"])
            groups = _top_indices(channel.reshape(kv_heads, -1).sum(dim=1), keep_groups)
            q_heads = (groups[:, None] * per_group + torch.arange(per_group)[None, :]).reshape(-1)
            q_rows, kv_rows = _head_rows(q_heads, head_dim), _head_rows(groups, head_dim)
            attn.q_proj, attn.o_proj = _linear_rows(attn.q_proj, q_rows), _linear_cols(attn.o_proj, q_rows)
            attn.k_proj, attn.v_proj = _linear_rows(attn.k_proj, kv_rows), _linear_rows(attn.v_proj, kv_rows)
            if hasattr(attn, "num_key_value_groups"):
                attn.num_key_value_groups = per_group
    keep_heads = keep_groups * per_group
    summary = {
        "ffn": [cfg.intermediate_size, keep_ffn],
        "heads": [cfg.num_attention_heads, keep_heads],
        "kv_heads": [kv_heads, keep_groups],
    }
    cfg.intermediate_size, cfg.head_dim = keep_ffn, head_dim
    cfg.num_attention_heads, cfg.num_key_value_heads = keep_heads, keep_groups
    return summary


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Weight rows of whole heads, in order."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _prune_gpt2(model, fraction: float, calib_blocks) -> dict:
    cfg = model.config
    inner = cfg.n_inner or 4 * cfg.n_embd
    blocks = model.transformer.h
    norms = _norms(model, {str(i): block.mlp.c_proj for i, block in enumerate(blocks)}, calib_blocks)
    keep = _keep_count(inner, fraction)
    for i, block in enumerate(blocks):
        mlp = block.mlp
        idx = _top_indices(_channel_importance(mlp.c_proj, norms[str(i)]), keep)
        c_fc = Conv1D(keep, cfg.n_embd)
        c_proj = Conv1D(cfg.n_embd, keep)
        with torch.no_grad():
            c_fc.weight.copy_(mlp.c_fc.weight[:, idx])
            c_fc.bias.copy_(mlp.c_fc.bias[idx])
            c_proj.weight.copy_(mlp.c_proj.weight[idx, :])
            c_proj.bias.copy_(mlp.c_proj.bias)
        mlp.c_fc, mlp.c_proj = c_fc, c_proj
    cfg.n_inner = keep
    return {"ffn": [inner, keep], "heads": [cfg.n_head, cfg.n_head]}
