"""The one perplexity protocol: next-token cross-entropy over packed validation blocks.

Every block of `block_size` tokens predicts its tokens 2..T from the ones before it (T-1 targets per block); the
loss is summed over all targets of all blocks and divided by their count; perplexity = exp(mean loss). Sums are
returned so data-parallel callers can add them across ranks before dividing."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from minigpt_ray.modeling.loss import IGNORE_INDEX


@torch.no_grad()
def nll_sums(
    model: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu"
) -> tuple[float, int]:
    """(summed negative log-likelihood, number of predicted tokens) over `batches` of [B, T] token ids, or of
    [B, 2, T] ids and labels (chat data: only the labelled tokens count)."""
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for batch in batches:
        batch = batch.to(device=device, dtype=torch.long)
        input_ids, labels = (batch[:, 0], batch[:, 1]) if batch.dim() == 3 else (batch, batch)
        logits = model(input_ids=input_ids).logits[:, :-1].float()
        targets = labels[:, 1:].reshape(-1)
        total_nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets, reduction="sum").item()
        total_tokens += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total_nll, total_tokens


def loss_and_perplexity(total_nll: float, total_tokens: int) -> tuple[float, float]:
    loss = total_nll / max(1, total_tokens)
    return loss, math.exp(min(loss, 50.0))


def perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 8, device: str = "cpu") -> float:
    """Single-process perplexity of `blocks` [N, T] (what the sweep, benchmarks and tests call)."""
    batches = (blocks[i : i + batch_size] for i in range(0, len(blocks), batch_size))
    return loss_and_perplexity(*nll_sums(model, batches, device))[1]
