"""Fine-tuning speed against what users would run instead: Hugging Face `Trainer` + peft on the same base, data,
block size, batch, precision and cores, measured in one run.

  .venv/bin/python bench/hf_peft.py [--model smollm2-135m-instruct] [--steps 12] [--lora-r 16] [--full]
      [--layouts 2x1,1x2]

The project side is `minigpt finetune` as a library call (Ray Train + DeepSpeed ZeRO-2, the fused loss), once per
worker layout (`2x1`: 2 workers x 1 CPU; `1x2`: 1 worker x 2 CPUs); the baseline is one `Trainer` process with
torch's threads set to the machine's cores, peft LoRA on the same projections (or full fine-tuning with --full),
AdamW, the same learning rate, the same packed Shakespeare blocks and global batch. Reported: steady tokens/s (steps
after the first two), the ratio to the Trainer's, and peak RSS. Precision: what `precision: auto` picks here, for
both sides.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from minigpt_ray.config import TrainJobConfig  # noqa: E402
from minigpt_ray.modeling.model import cpu_has_native_bf16, local_model_dir  # noqa: E402
from minigpt_ray.training.prepare import prepare_run  # noqa: E402
from minigpt_ray.training.trainer import resolve_precision, run_training  # noqa: E402

MICRO_BATCH_TOTAL = 8
"""Sequences per optimizer step on both sides (2 workers x 4, 1 worker x 8, the Trainer's batch of 8)."""


def job_config(model: str, output: Path, steps: int, r: int, workers: int, cpus: int) -> TrainJobConfig:
    cfg = TrainJobConfig(output=str(output), sample_prompt="")
    cfg.model.name = model
    cfg.data.sources, cfg.data.block_size, cfg.data.max_chars_per_source = ["shakespeare"], 128, 400_000
    t = cfg.train
    t.num_workers, t.cpus_per_worker, t.micro_batch_size = workers, cpus, MICRO_BATCH_TOTAL // workers
    t.max_steps, t.warmup_steps, t.lr = steps, 1, 1e-3
    t.eval_every, t.checkpoint_every, t.log_every, t.eval_batches = steps, steps, 2, 2
    if r:
        cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.dropout = r, 2.0 * r, 0.0
    return cfg.validate()


def hf_trainer(cfg: TrainJobConfig, precision: str, threads: int) -> dict:
    """Steady tokens/s of transformers' Trainer (+ peft LoRA) on the job's own packed blocks."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    torch.set_num_threads(threads)
    blocks = torch.from_numpy(prepare_run(cfg).data.train).long()
    model = AutoModelForCausalLM.from_pretrained(local_model_dir(cfg.model.name), dtype=torch.float32)
    if cfg.lora.r:
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.lora_alpha, lora_dropout=0.0, target_modules="all-linear")
        model = get_peft_model(model, lora)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(blocks)

        def __getitem__(self, index):
            return {"input_ids": blocks[index], "labels": blocks[index]}

    class Clock(TrainerCallback):
        stamps: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

    clock = Clock()
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-trainer-"),
        per_device_train_batch_size=MICRO_BATCH_TOTAL,
        max_steps=cfg.train.max_steps,
        learning_rate=cfg.train.lr,
        warmup_steps=cfg.train.warmup_steps,
        bf16=precision.startswith("bf16"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=cfg.train.max_steps,
        dataloader_num_workers=0,
        seed=cfg.train.seed,
    )
    Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[clock]).train()
    steady = clock.stamps[2:]
    tokens = (len(steady) - 1) * MICRO_BATCH_TOTAL * cfg.data.block_size
    return {
        "tokens_per_s": tokens / (steady[-1] - steady[0]),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--layouts", default="2x1,1x2", help="worker layouts WORKERSxCPUS of the project's runs")
    args = parser.parse_args()
    r = 0 if args.full else args.lora_r
    threads = os.cpu_count() or 2
    precision = resolve_precision("auto", use_gpu=False)
    work = Path(tempfile.mkdtemp(prefix="minigpt-hf-peft-"))
    rows = []
    for layout in args.layouts.split(","):
        workers, cpus = map(int, layout.split("x"))
        m = run_training(job_config(args.model, work / layout, args.steps, r, workers, cpus))
        rows.append((f"minigpt, {workers} worker(s) x {cpus} CPU, ZeRO-2", m["steady_tokens_per_s"],
                     max(m["peak_rss_bytes_per_worker"]) / 2**20 * workers))  # fmt: skip
    baseline = hf_trainer(job_config(args.model, work / "hf", args.steps, r, 1, threads), precision, threads)
    rows.append((f"HF Trainer{' + peft' if r else ''}, 1 process x {threads} threads", baseline["tokens_per_s"],
                 baseline["rss_mb"]))  # fmt: skip
    kind = f"LoRA r={r}" if r else "full fine-tuning"
    print(f"\n{args.model}, {kind}, {precision} (native bf16: {cpu_has_native_bf16()}), block 128, batch 8 x 128")
    print("| run | steady tokens/s | vs HF Trainer | peak RSS MB (all processes of the run) |")
    print("|---|---|---|---|")
    for name, tps, rss in rows:
        print(f"| {name} | {tps:,.0f} | {tps / baseline['tokens_per_s']:.2f} | {rss:,.0f} |")


if __name__ == "__main__":
    main()
