"""Unstructured and N:M pruning: magnitude (per layer or global) and Wanda (|W| x input-activation norm).

Every function returns boolean keep-masks shaped like `weight_rows(layer)` ([out, in]) and zeroes the pruned
weights in place; the masks are what recovery fine-tuning re-applies after each optimizer step.
"""

from __future__ import annotations

import torch
from torch import nn

from minigpt_ray.compress.layers import collect_input_norms, target_layers, weight_rows
from minigpt_ray.config.compress import parse_pattern


def keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask keeping exactly numel - round(sparsity * numel) largest scores (ties broken by position)."""
    flat = scores.reshape(-1)
    n_prune = int(round(sparsity * flat.numel()))
    mask = torch.ones_like(flat, dtype=torch.bool)
    if n_prune:
        mask[torch.argsort(flat, stable=True)[:n_prune]] = False
    return mask.reshape(scores.shape)


def keep_largest_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda's comparison group: the same exact count pruned in every output row."""
    n_prune = int(round(sparsity * scores.shape[1]))
    mask = torch.ones_like(scores, dtype=torch.bool)
    if n_prune:
        order = torch.argsort(scores, dim=1, stable=True)[:, :n_prune]
        mask.scatter_(1, order, False)
    return mask


def keep_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N largest of every M consecutive weights along the input dimension."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"pattern: {n}:{m} needs in_features divisible by {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.argsort(groups, dim=2, descending=True, stable=True)[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order, True)
    return mask.reshape(rows, cols)


def layer_scores(method: str, layers: dict[str, nn.Module], norms: dict[str, torch.Tensor] | None):
    with torch.no_grad():
        if method == "wanda":
            return {name: weight_rows(m).abs().float() * norms[name][None, :] for name, m in layers.items()}
        return {name: weight_rows(m).abs().float() for name, m in layers.items()}


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all layers: exactly round(sparsity * total) weights pruned in the whole model."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    mask = keep_largest(flat, sparsity)
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = mask[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


def prune_unstructured(
    model: nn.Module,
    method: str,
    sparsity: float,
    pattern: str = "unstructured",
    calib_blocks: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Prune the target layers; method is magnitude, magnitude-global or wanda. Returns the keep-masks."""
    layers = target_layers(model)
    norms = None
    if method == "wanda":
        if calib_blocks is None or len(calib_blocks) == 0:
            raise ValueError("wanda needs calibration blocks")
        norms = collect_input_norms(model, layers, calib_blocks)
    scores = layer_scores(method, layers, norms)
    nm = parse_pattern(pattern)
    if nm is not None:
        masks = {name: keep_n_of_m(s, *nm) for name, s in scores.items()}
    elif method == "magnitude-global":
        masks = global_masks(scores, sparsity)
    elif method == "wanda":
        masks = {name: keep_largest_per_row(s, sparsity) for name, s in scores.items()}
    else:
        masks = {name: keep_largest(s, sparsity) for name, s in scores.items()}
    apply_masks(layers, masks)
    return masks


def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, mask in masks.items():
            weight_rows(layers[name]).mul_(mask.to(layers[name].weight.dtype))


def sparsity_of(model: nn.Module) -> float:
    """Fraction of zero weights over the target layers (what pruning acts on)."""
    zeros = total = 0
    for module in target_layers(model).values():
        w = weight_rows(module)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)
