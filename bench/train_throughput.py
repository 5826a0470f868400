"""Training throughput and memory of the Ray Train + DeepSpeed path against plain PyTorch, same run.

  .venv/bin/python bench/train_throughput.py [--model gpt-micro] [--steps 30] [--memory-model gpt-small] [--memory-only]
      [--configs fp32:2,bf16-mixed:2:compile] [--block-size 256] [--grad-accum 4] [--ray-background]

Prints, per precision, ZeRO stage and compile setting, the steady tokens/s, data-wait share and MFU of the Ray path
(2 workers x 1 thread) against baselines (bench/baselines.py) each measured right before and right after the Ray
run: a plain single-process loop (all threads) running the same model code (same loss, compile, AdamW kernel and
gradient accumulation) in the same precision and in fp32; an ordinary fp32 loop (HF's own loss, torch's default
AdamW, eager); a pair of 1-thread processes running the same-code loop on half the batch each at once with no
communication (the ceiling for two 1-thread workers); and the workers' own DeepSpeed engine in two 1-thread
processes over gloo without Ray. Their ratios split the cost into DeepSpeed's (DeepSpeed/pair) and Ray's
(Ray/DeepSpeed). Then model-state memory per worker for ZeRO 0-3 on a larger model. MFU uses a matmul peak measured
in the same run. --ray-background measures only what an idle Ray's processes take from the no-Ray DeepSpeed pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import torch
from baselines import RAY_RUN_SIDE_ACTORS, deepspeed_pair, plain_loop, plain_pair, ray_background

from minigpt_ray.config import TrainJobConfig
from minigpt_ray.modeling.model import attention_for, build_model, count_parameters, flops_per_token
from minigpt_ray.training.prepare import prepare_run
from minigpt_ray.training.worker_utils import measure_matmul_flops


def base_config(model: str, steps: int, output: str, block: int, micro: int, accum: int = 1) -> TrainJobConfig:
    cfg = TrainJobConfig(output=output, sample_prompt="")
    cfg.model.name = model
    cfg.model.vocab_size = 4096
    cfg.data.sources = ["shakespeare", "zh-news"]
    cfg.data.max_chars_per_source = 400_000
    cfg.data.block_size = block
    cfg.model.tokenizer_train_chars = 400_000
    t = cfg.train
    t.max_steps, t.warmup_steps, t.micro_batch_size, t.grad_accum_steps = steps, 2, micro, accum
    t.eval_every = t.checkpoint_every = 10**6
    t.eval_batches, t.log_every = 2, 10
    t.checkpoint_every = steps  # the final checkpoint only
    return cfg.validate()


def spec_config(args, output: str, spec: tuple[str, int, bool], fused: bool, fused_opt: bool) -> TrainJobConfig:
    """The bench's run config with one --configs entry (precision, ZeRO stage, compile) and the loss/AdamW choice."""
    run = base_config(args.model, args.steps, output, args.block_size, args.micro_batch, args.grad_accum)
    run.train.precision, run.train.zero_stage, run.train.compile = spec
    run.train.fused_loss, run.train.fused_optimizer = fused, fused_opt
    return run


def ray_run(cfg: TrainJobConfig) -> dict:
    from minigpt_ray.training.trainer import run_training

    return run_training(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt-micro")
    parser.add_argument("--memory-model", default="gpt-small")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (Ray and plain)")
    parser.add_argument("--memory-only", action="store_true", help="only the ZeRO 0-3 memory table (~4 min)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory table")
    parser.add_argument(
        "--configs",
        default="fp32:2,bf16:2,bf16-mixed:0,bf16-mixed:1,bf16-mixed:2,bf16-mixed:3,"
        "fp32:2:compile,bf16:2:compile,bf16-mixed:2:compile",
        help="precision:zero-stage[:compile] entries to run through Ray Train",
    )
    parser.add_argument("--no-fused-loss", action="store_true", help="HF's own loss in the Ray and plain runs")
    parser.add_argument(
        "--no-fused-optimizer",
        action="store_true",
        help="torch's default AdamW instead of its fused kernel in the Ray and plain runs",
    )
    parser.add_argument(
        "--ray-background",
        action="store_true",
        help="only: the no-Ray DeepSpeed baseline (first --configs entry) with and without an idle "
        f"embedded Ray holding {RAY_RUN_SIDE_ACTORS} idle actors, alternated (~6 min)",
    )
    args = parser.parse_args()
    threads = os.cpu_count() or 2
    work = tempfile.mkdtemp(prefix="bench-train-")
    if args.memory_only:
        memory_table(args, work)
        return
    cfg = base_config(args.model, args.steps, f"{work}/probe", args.block_size, args.micro_batch, args.grad_accum)
    prepared = prepare_run(cfg)
    peak = {
        p: measure_matmul_flops(torch.bfloat16 if p != "fp32" else torch.float32, torch.device("cpu"), 1.0)
        for p in ("fp32", "bf16-mixed")
    }
    peak["bf16"] = peak["bf16-mixed"]
    model = build_model(prepared.worker_config(1).model, attention_for("cpu"))
    flops_tok = flops_per_token(model.config, count_parameters(model), args.block_size)
    fused, fused_opt = not args.no_fused_loss, not args.no_fused_optimizer
    if args.ray_background:
        print_ray_background(args, prepared, work, fused, fused_opt)
        return
    rows = [measure_config(args, prepared, work, spec, fused, fused_opt, threads) for spec in configs(args.configs)]
    print_throughput_table(args, rows, peak, flops_tok, fused, fused_opt, threads, count_parameters(model))
    if not args.no_memory:
        memory_table(args, work)


def measure_config(
    args, prepared, work: str, spec: tuple[str, int, bool], fused: bool, fused_opt: bool, threads: int
) -> tuple:
    """One table row: the Ray run of `spec` (precision, ZeRO stage, compile) with every baseline measured right
    before and right after it, each baseline's two runs averaged (all skip their warm-up steps)."""
    precision, stage, compile = spec
    run = spec_config(args, f"{work}/{precision}-z{stage}{'-c' * compile}", spec, fused, fused_opt)
    same_run = dataclasses.replace(prepared, cfg=run)  # same tokens, this run's training settings
    # This machine's speed drifts by 2x over minutes, so a ratio is only meaningful against measurements taken
    # around the Ray run: each baseline runs once before it and once after it, in mirrored order.
    baselines = {
        "same": (precision, fused, compile, fused_opt),
        "fp32": ("fp32", fused, compile, fused_opt),
        "ordinary": ("fp32", False, False, False),
    }
    plain = {name: [plain_loop(prepared, *setting, args.steps, threads)] for name, setting in baselines.items()}
    pair = [plain_pair(prepared, *baselines["same"], args.steps)]
    no_ray = [deepspeed_pair(same_run, args.steps)]
    m = ray_run(run)
    no_ray.append(deepspeed_pair(same_run, args.steps))
    pair.append(plain_pair(prepared, *baselines["same"], args.steps))
    for name in reversed(list(baselines)):
        plain[name].append(plain_loop(prepared, *baselines[name], args.steps, threads))
    return (
        f"{precision}, ZeRO-{stage}{', compiled' if compile else ''}",
        precision,
        m["steady_tokens_per_s"],
        m["steady_data_wait_fraction"],
        *(sum(plain[name]) / 2 for name in baselines),
        sum(pair) / 2,
        sum(no_ray) / 2,
    )


def print_ray_background(args, prepared, work: str, fused: bool, fused_opt: bool) -> None:
    """What Ray's own processes take from two busy workers: the no-Ray DeepSpeed pair alone, then beside an idle
    embedded Ray (raylet, GCS, dashboard and its agent, plus as many idle actors as a training run starts)."""
    spec = configs(args.configs)[0]
    precision, stage, compile = spec
    run = spec_config(args, f"{work}/background", spec, fused, fused_opt)
    without, with_ray = ray_background(dataclasses.replace(prepared, cfg=run), args.steps)
    print(f"\nCPU: {cpu_description()}")
    print(
        f"DeepSpeed without Ray, {precision} ZeRO-{stage}{' compiled' if compile else ''}, {args.model}, block "
        f"{args.block_size}, {args.steps} steps, tokens/s alone: {', '.join(f'{v:,.0f}' for v in without)}; "
        f"beside an idle Ray with {RAY_RUN_SIDE_ACTORS} idle actors: {', '.join(f'{v:,.0f}' for v in with_ray)}; "
        f"ratio of means {sum(with_ray) / sum(without):.3f}"
    )
    sys.stdout.flush()


def print_throughput_table(
    args, rows: list, peak: dict, flops_tok: float, fused: bool, fused_opt: bool, threads: int, n_params: int
) -> None:
    print(f"\nCPU: {cpu_description()}; bf16/fp32 matmul peak ratio {peak['bf16'] / peak['fp32']:.2f}")
    print(
        f"\nmodel {args.model}: {n_params / 1e6:.1f}M params, block {args.block_size}, global batch "
        f"{2 * args.micro_batch * args.grad_accum} ({args.grad_accum} micro-batches), {args.steps} steps, "
        f"{'fused chunked' if fused else 'HF'} loss, {'fused' if fused_opt else 'default'} AdamW; matmul peak "
        f"({threads} threads): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s; plain = "
        "mean of the plain loop right before and right after each Ray run, same loss and compile setting; "
        "pair = two such 1-thread processes on half the batch each at once, no communication; "
        "DeepSpeed without Ray = the workers' model code and DeepSpeed config in two 1-thread processes over "
        "gloo, started without Ray and fed from memory; "
        "ordinary = plain fp32 with HF's loss and torch's default AdamW, eager"
    )
    print(
        "| Ray Train + DeepSpeed, 2 workers x 1 thread | tokens/s | data wait | plain, same precision, "
        f"1 process x {threads} threads | ratio | pair, 2 processes x 1 thread | pair/plain | "
        "DeepSpeed without Ray | DeepSpeed/pair | Ray/DeepSpeed | "
        "plain fp32 | vs plain fp32 | ordinary fp32 | vs ordinary | MFU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, precision, tps, data_wait, plain_same, plain_fp32, ordinary, pair, no_ray in rows:
        print(
            f"| {label} | {tps:,.0f} | {data_wait:.1%} | {plain_same:,.0f} | {tps / plain_same:.2f} | "
            f"{pair:,.0f} | {pair / plain_same:.2f} | {no_ray:,.0f} | {no_ray / pair:.2f} | {tps / no_ray:.2f} | "
            f"{plain_fp32:,.0f} | {tps / plain_fp32:.2f} | {ordinary:,.0f} | {tps / ordinary:.2f} | "
            f"{flops_tok * tps / peak[precision]:.1%} |"
        )
    sys.stdout.flush()


def cpu_description() -> str:
    """CPU model and its bf16 matmul unit: AMX tiles (Intel Sapphire Rapids on) reach several times fp32; AVX-512
    BF16 alone (e.g. AMD Zen 4) at most 2x, which bounds any bf16 training speed-up on that machine."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    unit = "AMX" if "amx_bf16" in flags else "AVX-512 BF16 (no AMX)" if "avx512_bf16" in flags else "no bf16 unit"
    return f"{model}, bf16 matmuls on {unit}"


def configs(spec: str) -> list[tuple[str, int, bool]]:
    """ "fp32:2,bf16-mixed:2:compile" -> [("fp32", 2, False), ("bf16-mixed", 2, True)]."""
    entries = [item.split(":") for item in spec.split(",") if item]
    return [(e[0], int(e[1]), e[2:] == ["compile"]) for e in entries]


def memory_table(args, work: str) -> None:
    rows = []
    for stage in (0, 1, 2, 3):
        run = base_config(args.memory_model, 4, f"{work}/mem-z{stage}", args.block_size, 2)
        run.train.zero_stage = stage
        m = ray_run(run)
        rows.append((stage, max(m["tensor_bytes_per_worker"]) / 2**20, max(m["peak_rss_bytes_per_worker"]) / 2**20))
    print(
        f"\nmemory per worker, {args.memory_model}, bf16-mixed, 2 workers (tensor storage alive after the last "
        "backward: "
        "weights + gradients + optimizer states + comm buffers; and peak RSS of the worker process):"
    )
    print("| ZeRO | tensors MiB (max over workers) | vs ZeRO-0 | peak RSS MiB | vs ZeRO-0 |")
    print("|---|---|---|---|---|")
    for stage, tensors, rss in rows:
        print(f"| {stage} | {tensors:,.0f} | {tensors / rows[0][1]:.2f} | {rss:,.0f} | {rss / rows[0][2]:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
