"""The one perplexity protocol: next-token cross-entropy over packed validation blocks.

Every block of `block_size` tokens predicts its tokens 2..T from the ones before it (T-1 targets per block); the
loss is summed over all targets of all blocks and divided by their count; perplexity = exp(mean loss). Sums are
returned so data-parallel callers can add them across ranks before dividing."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F


@torch.no_grad()
def nll_sums(
    model: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu"
) -> tuple[float, int]:
    """(summed negative log-likelihood, number of predicted tokens) over `batches` of [B, T] token ids."""
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for input_ids in batches:
        input_ids = input_ids.to(device=device, dtype=torch.long)
        logits = model(input_ids=input_ids).logits[:, :-1].float()
        targets = input_ids[:, 1:]
        total_nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum").item()
        total_tokens += targets.numel()
    model.train(was_training)
    return total_nll, total_tokens


def loss_and_perplexity(total_nll: float, total_tokens: int) -> tuple[float, float]:
    loss = total_nll / max(1, total_tokens)
    return loss, math.exp(min(loss, 50.0))


def perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 8, device: str = "cpu") -> float:
    """Single-process perplexity of `blocks` [N, T] (what the sweep, benchmarks and tests call)."""
    batches = (blocks[i : i + batch_size] for i in range(0, len(blocks), batch_size))
    return loss_and_perplexity(*nll_sums(model, batches, device))[1]
