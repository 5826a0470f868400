"""Helpers of the worker loop: logging and TensorBoard from rank 0, batches from this worker's share of the blocks,
collective reductions, weight export, memory and peak-FLOP measurement. Kept apart so the loop itself reads on one
screen."""

from __future__ import annotations

import math
import resource
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from minigpt_ray.logs import configure_logging, get_logger

# Vendor peak dense bf16 TFLOP/s per GPU (no sparsity), for MFU on CUDA workers.
GPU_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,
    "T4": 65.0,
}


def log(rank: int, message: str) -> None:
    """One progress line from rank 0 (the package logger on the worker's stderr, which Ray forwards to the job log;
    print would be teed a second time by Ray Train's patched print)."""
    if rank == 0:
        get_logger().info(message)


def setup_worker_logging() -> None:
    configure_logging()
    # DeepSpeed calls torch's deprecated all_gather_into_tensor every step; one warning per step buries progress.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.*")


class Board:
    """TensorBoard event files written by rank 0 (`tensorboard --logdir <output>/tensorboard`); other ranks no-op."""

    def __init__(self, config, rank: int):
        self.writer = None
        if rank == 0 and config.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=config.tensorboard_dir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Window:
    """Training losses since the last progress line."""

    loss: float = 0.0
    count: int = 0
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: float) -> None:
        self.loss += loss
        self.count += 1

    def reset(self) -> None:
        self.loss, self.count, self.steps, self.start = 0.0, 0, 0, time.perf_counter()


@dataclass
class Steady:
    """Step time after the first steps of a (re)start."""

    from_step: int
    seconds: float = 0.0
    steps: int = 0
    data_seconds: float = 0.0

    def add(self, seconds: float, data_seconds: float) -> None:
        self.seconds += seconds
        self.steps += 1
        self.data_seconds += data_seconds


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage alive in this process (weights, gradients, optimizer states, buffers), each
    storage counted once: what ZeRO partitions, without the allocator noise of RSS."""
    import gc

    storages = {}
    with warnings.catch_warnings():  # isinstance() on some deprecated torch module objects warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor) and obj.device.type in ("cpu", "cuda"):
                    storage = obj.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
            except Exception:  # some tensor subclasses / meta tensors have no storage
                continue
    return sum(storages.values())


def endless_batches(blocks: np.ndarray, batch_size: int, seed: int, rank: int, world: int) -> Iterator[torch.Tensor]:
    """Token blocks [B, T] (or [B, 2, T]: ids and labels) from this worker's share of the training blocks (every
    world-th one), in a fresh seeded order each epoch. A batch may run across an epoch's end, so a share smaller than
    a batch still trains instead of yielding nothing."""
    mine = np.arange(rank, len(blocks), world) if rank < len(blocks) else np.array([rank % len(blocks)])
    order = np.random.default_rng(seed)
    pending = np.empty(0, dtype=np.int64)
    while True:
        while len(pending) < batch_size:
            pending = np.concatenate([pending, order.permutation(mine)])
        taken, pending = pending[:batch_size], pending[batch_size:]
        yield torch.from_numpy(blocks[taken]).long()  # fancy indexing copies out of the read-only object store


def rank_batches(
    blocks: np.ndarray, batch_size: int, max_batches: int, rank: int, world: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This rank's share (every world-th batch) of the first `max_batches` validation batches, in a fixed order, so
    the ranks together cover the same tokens whatever the worker count; plus uncounted padding batches that even
    out the number of forward passes per rank."""
    starts = range(0, len(blocks), batch_size)
    if max_batches:
        starts = starts[:max_batches]
    batches = [torch.tensor(blocks[start : start + batch_size], dtype=torch.long) for start in starts]
    mine = batches[rank::world]
    return mine, batches[:1] * (math.ceil(len(batches) / world) - len(mine))


def global_mean(total: float, count: int, device: torch.device) -> float:
    sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return (sums[0] / sums[1].clamp(min=1)).item()


def gather_floats(values: list[float], device: torch.device, world: int) -> list[list[float]]:
    local = torch.tensor(values, dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    return [g.tolist() for g in gathered]


def distill_note(spec) -> str:
    """How the progress log names a distillation (a DistillSpec, or None)."""
    if spec is None:
        return ""
    return f", distilling {Path(spec.teacher).name or spec.teacher} (alpha {spec.alpha:g}, T {spec.temperature:g})"


def gather_strings(value: str, world: int) -> list[str]:
    """Every rank's `value`, by rank."""
    values: list[str | None] = [None] * world
    dist.all_gather_object(values, value)
    return [str(v) for v in values]


def measure_matmul_flops(dtype: torch.dtype, device: torch.device, seconds: float = 0.5, size: int = 1024) -> float:
    """Sustained FLOP/s of a square matmul on this worker's threads (the MFU denominator on CPU)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2.0 * size**3 * runs / (time.perf_counter() - start)


def cluster_peak_flops(train, device: torch.device) -> float:
    """Sum over workers of each one's peak: configured, looked up for the GPU model, or measured on CPU."""
    if train.peak_tflops > 0:
        per_worker = train.peak_tflops * 1e12
    elif device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
        if known is None:
            log(0, f"MFU: peak of {name!r} unknown, assuming 100 TFLOP/s; set train.peak_tflops")
        per_worker = (known or 100.0) * 1e12
    else:
        # The better of the two: on a CPU without bf16 instructions torch's emulated 1024² bf16 matmul is slower
        # than the small matmuls a bf16 step runs (and than fp32), so it would not bound what the step achieves.
        per_worker = measure_matmul_flops(torch.float32, device)
        if train.precision.startswith("bf16"):
            per_worker = max(per_worker, measure_matmul_flops(torch.bfloat16, device))
    total = torch.tensor([per_worker], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item()


def full_state_dict(engine, zero_stage: int, rank: int) -> dict | None:
    """Full fp32 weights on rank 0 (None elsewhere). Under ZeRO-3 every rank must join the gather."""
    import deepspeed

    if zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            return _cpu_fp32_state(engine.module) if rank == 0 else None
    return _cpu_fp32_state(engine.module) if rank == 0 else None


def _cpu_fp32_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in module.state_dict().items()}


def save_hf_model(model_config, state_dict: dict, directory: Path):
    """Rebuild the architecture on CPU, load the gathered weights strictly and write safetensors + config; returns
    the rebuilt model."""
    from transformers import AutoModelForCausalLM

    model_config.use_cache = True
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    model.load_state_dict(state_dict, strict=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    return model
