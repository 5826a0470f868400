"""LoRA against full fine-tuning of the same model for the same steps, measured in one run.

  .venv/bin/python bench/lora.py [--model runs/pipeline/pretrain/model] [--steps 300] [--r 16]

Both runs fine-tune the model (default: the quickstart's pretrained mini GPT) on zh-reviews with Ray Train +
DeepSpeed ZeRO-2 (2 workers, bf16-mixed, the same data, seed, schedule and steps; LoRA on every attention and MLP
projection, its usual higher learning rate). Reported: held-out loss, trainable parameters, peak RSS and tensor
bytes per worker, training seconds. Targets: LoRA's held-out loss within 5% of full fine-tuning's, <= 5% of the
parameters trainable, >= 30% lower peak memory per worker.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt_ray.config import TrainJobConfig  # noqa: E402
from minigpt_ray.training.trainer import run_training  # noqa: E402


def fine_tune(model: str, output: Path, steps: int, r: int) -> dict:
    cfg = TrainJobConfig(output=str(output), sample_prompt="")
    cfg.model.name = model
    cfg.data.sources, cfg.data.block_size, cfg.data.max_chars_per_source = ["zh-reviews"], 128, 500_000
    t = cfg.train
    t.num_workers, t.micro_batch_size, t.max_steps, t.warmup_steps = 2, 16, steps, steps // 10
    t.lr = 2e-3 if r else 1e-3  # LoRA's adapters start at zero and take a higher rate (peft's and litgpt's recipes)
    t.eval_every, t.checkpoint_every, t.log_every, t.eval_batches = steps, steps, 50, 0
    if r:
        cfg.lora.r, cfg.lora.lora_alpha = r, 2.0 * r
    return run_training(cfg.validate())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/pipeline/pretrain/model")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--r", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minigpt-lora-"))
    model = str(Path(args.model).resolve())
    full = fine_tune(model, work / "full", args.steps, 0)
    lora = fine_tune(model, work / "lora", args.steps, args.r)
    print("\n| fine-tuning | held-out loss | trainable params | peak RSS MB / worker | tensor MB / worker | train s |")
    print("|---|---|---|---|---|---|")
    for name, m in (("full", full), (f"LoRA r={args.r}", lora)):
        print(
            f"| {name} | {m['final_val_loss']:.4f} | {m['trainable_params']:,} of {m['params']:,} | "
            f"{max(m['peak_rss_bytes_per_worker']) / 2**20:.0f} | {max(m['tensor_bytes_per_worker']) / 2**20:.1f} | "
            f"{m['train_seconds']:.0f} |"
        )
    loss_ratio = lora["final_val_loss"] / full["final_val_loss"]
    rss = max(lora["peak_rss_bytes_per_worker"]) / max(full["peak_rss_bytes_per_worker"])
    tensors = max(lora["tensor_bytes_per_worker"]) / max(full["tensor_bytes_per_worker"])
    print(
        f"LoRA/full: held-out loss {loss_ratio:.3f}x (target <= 1.05), trainable "
        f"{lora['trainable_params'] / lora['params']:.1%} (target <= 5%), peak RSS {rss:.2f}x, model-state tensors "
        f"{tensors:.2f}x (target <= 0.70x)"
    )


if __name__ == "__main__":
    main()
