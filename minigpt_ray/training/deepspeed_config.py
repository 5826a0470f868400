"""The one function that turns the typed TrainConfig into a DeepSpeed config dict, and the optimizer's parameter
groups (plain torch: the bench's no-Ray baselines use them too)."""

from __future__ import annotations

import torch

from minigpt_ray.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as GPT-2/nanoGPT/Llama recipes use them: weight matrices and embeddings (>= 2-D) decay; norm
    gains and biases (1-D) do not, since shrinking them only distorts the activations' scale. Tied weights once."""
    unique = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    # ZeRO-3 partitions parameters at construction: their full shape is in ds_shape.
    decay = [p for p in unique if len(getattr(p, "ds_shape", p.shape)) >= 2]
    no_decay = [p for p in unique if len(getattr(p, "ds_shape", p.shape)) < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_deepspeed_config(train: TrainConfig, world_size: int) -> dict:
    """Optimizer, LR schedule, precision and ZeRO settings for `world_size` data-parallel ranks.

    Precision: fp32; bf16-mixed (torch.autocast inside the engine); bf16 (DeepSpeed bf16 weights + fp32 master);
    fp16 (loss-scaled). AdamW runs as torch's implementation (`torch_adam`, fused kernel by default: DeepSpeed passes
    `fused` through to torch.optim.AdamW) so no DeepSpeed op has to be compiled on CPU machines;
    WarmupCosineLR gives linear warmup then cosine decay to lr·min_lr_ratio over max_steps optimizer steps.
    """
    config = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps * world_size,
        "gradient_clipping": train.grad_clip,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "initial_scale_power": 16},
        "zero_optimization": _zero_section(train),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": [0.9, 0.95],
                "eps": 1e-8,
                "weight_decay": train.weight_decay,
                "torch_adam": True,
                "fused": train.fused_optimizer,
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            # DeepSpeed rejects warmup_num_steps=0; no warmup = a warmup that already starts at the full lr.
            "params": {
                "total_num_steps": train.max_steps,
                "warmup_num_steps": max(1, train.warmup_steps),
                "warmup_min_ratio": 0.0 if train.warmup_steps else 1.0,
                "cos_min_ratio": train.min_lr_ratio,
                "warmup_type": "linear",
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train.precision == "bf16-mixed":
        # fp32 parameters and optimizer; the engine runs forward under torch.autocast(bf16) and communicates
        # Linear gradients in bf16. On CPU this beats bf16 weights (docs/benchmarks.md) because elementwise ops stay
        # fp32 and only matmuls use the bf16 units.
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return config


def _zero_section(train: TrainConfig) -> dict:
    zero: dict = {"stage": train.zero_stage}
    if train.zero_stage >= 1:
        zero.update(
            contiguous_gradients=True,
            overlap_comm=False,
            reduce_scatter=True,
            reduce_bucket_size=train.bucket_size,
            allgather_bucket_size=train.bucket_size,
        )
    if train.zero_stage == 3:
        # Parameters are gathered layer by layer; nothing stays resident, so the per-worker saving is real.
        zero.update(
            stage3_prefetch_bucket_size=train.bucket_size,
            stage3_param_persistence_threshold=0,
            stage3_gather_16bit_weights_on_model_save=True,
        )
    return zero
