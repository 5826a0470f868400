"""Which training precision this CPU should use: fp32 against bf16 matmul throughput, and what `precision: auto`
picks here.

  .venv/bin/python bench/precision.py [--size 1024] [--threads 2]

Prints GFLOP/s of a square matmul in fp32 and bf16 (the work of a bf16-mixed training step) with torch's threads
set as a CPU training worker sets them, their ratio, the CPU's bf16 instructions, and the precision `auto` resolves
to. On CPUs without AVX-512 BF16 or AMX torch emulates bf16 matmuls, which is why `auto` falls back to fp32 there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import cpu_description  # noqa: E402

from minigpt_ray.training.trainer import resolve_precision  # noqa: E402


def gflops(size: int, dtype: torch.dtype, seconds: float = 2.0) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up: kernels chosen, buffers allocated
    count, started = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fp32, bf16 = gflops(args.size, torch.float32), gflops(args.size, torch.bfloat16)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {args.threads} threads, {args.size}² matmul")
    print("| dtype | GFLOP/s | vs fp32 |")
    print("|---|---|---|")
    print(f"| fp32 | {fp32:,.1f} | 1.00 |")
    print(f"| bf16 | {bf16:,.1f} | {bf16 / fp32:.3f} |")
    print(f"precision auto resolves to: {resolve_precision('auto', use_gpu=False)}")


if __name__ == "__main__":
    main()
