"""The worker loop's state: what a checkpoint stores beside the DeepSpeed shards and what metrics.json summarises."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class TrainerState:
    step: int = 0
    tokens: int = 0
    """Training tokens seen over all workers."""
    train_seconds: float = 0.0
    """Seconds inside training steps (evaluation and checkpoints excluded)."""
    history: list[dict] = field(default_factory=list)
    """One record per evaluation: step, tokens, val_loss, val_ppl, val_tokens, train_loss, tokens_per_s, mfu,
    train_seconds."""
    train_curve: list[list[float]] = field(default_factory=list)
    """[step, mean training loss since the previous progress line]."""
    resumed_from: list[int] = field(default_factory=list)
    """Steps of the checkpoints this run resumed from."""
    placements: list[list[str]] = field(default_factory=list)
    """For each start of the worker group (the first, then each restart): the Ray node id of every rank."""
    last_train_loss: float | None = None
    tensor_bytes: int | None = None
    """Live tensor bytes on this worker at the last step's high-water mark (weights, gradients, optimizer states)."""
    steady_tokens_per_s: float | None = None
    """Throughput after the first steps of a (re)start (allocation, data pipeline start and lazy init excluded)."""
    steady_data_wait_fraction: float | None = None
    """Rank 0's share of steady step time spent taking its batches."""
    peak_rss_bytes_per_worker: list[float] = field(default_factory=list)
    tensor_bytes_per_worker: list[float] = field(default_factory=list)
    partitioned_at_construction: bool = False
    """ZeRO-3 parameters were partitioned as the model was built (deepspeed.zero.Init)."""
    params: int | None = None
    """The model's parameters (tied weights once), LoRA adapters included."""
    trainable_params: int | None = None
    """Parameters the optimizer updates: every one, or only the LoRA adapters."""
    fused_loss: bool = False
    compiled: bool = False
    fused_optimizer: bool = False
    """What DeepSpeed actually built (torch's fused AdamW kernel)."""
    timeline: dict[str, float] = field(default_factory=dict)
    """Rank 0's wall-clock times (epoch seconds) in the last start of the workers: `entered` (the loop function
    began), `engine_ready` (model built, DeepSpeed initialized), `loop_start`, `loop_done`. The driver turns them
    into `phase_seconds`."""
    weight_decay_groups: list[float] = field(default_factory=list)
    """Weight decay of each optimizer parameter group DeepSpeed built (decayed weights, then norms and biases)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})
