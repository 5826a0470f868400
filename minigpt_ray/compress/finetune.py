"""The short fine-tune a candidate may get (recovery after pruning, a student's distillation): AdamW, an optional
linear warm-up, linear decay, clipped gradients, seeded random batches of training blocks. Plain PyTorch."""

from __future__ import annotations

from collections.abc import Callable

import torch


def short_finetune(
    model,
    train_blocks: torch.Tensor,
    steps: int,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    lr: float,
    batch_size: int = 8,
    seed: int = 0,
    warmup_steps: int = 0,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """Train `model` for `steps` steps on `loss_of(batch)`; `after_step` runs after every optimizer step (e.g. to
    re-apply a sparsity mask). Returns the loss of every step; leaves the model in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    decay_steps = max(steps - warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup_steps if step < warmup_steps else 1 - (step - warmup_steps) / decay_steps,
    )
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        batch = train_blocks[torch.randint(len(train_blocks), (batch_size,), generator=generator)].long()
        loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step:
            after_step()
        losses.append(loss.item())
    model.eval()
    return losses
