"""Baselines that bench/train_throughput.py measures the Ray Train + DeepSpeed path against, each on the same model
code, data, batch and precision:

- plain_loop: one process, all threads, plain PyTorch (what the issue calls "plain");
- plain_pair: two 1-thread processes at once on half the batch each, no communication (the most two 1-thread
  data-parallel workers can get from this machine);
- deepspeed_pair: two 1-thread processes running the workers' own DeepSpeed engine over gloo, without Ray
  (what Ray Train adds on top is Ray over this);
- ray_background: deepspeed_pair with and without an idle embedded Ray that runs as many actors as a training run
  starts besides its workers (what Ray's own processes take from the workers on a small machine).
"""

from __future__ import annotations

import multiprocessing
import os
import time

import torch

from minigpt_ray.cluster import connect_ray, free_port
from minigpt_ray.modeling.loss import use_training_loss
from minigpt_ray.modeling.model import attention_for, build_model
from minigpt_ray.training.deepspeed_config import param_groups

# Actors a Ray Train run starts besides its workers (listed with `ps` during a bench run on Ray 2.60):
# TrainController, SynchronizationActor, PlacementGroupCleaner, PreemptionWatcher, _AutoscalingCoordinatorActor.
RAY_RUN_SIDE_ACTORS = 5


def plain_loop(
    prepared,
    precision: str,
    fused: bool,
    compile: bool,
    fused_opt: bool,
    steps: int,
    threads: int,
    share: int = 1,
    barrier=None,
) -> float:
    """tokens/s of a single-process loop: AdamW, autocast for bf16, same model, data, batch and gradient
    accumulation; `fused`/`compile` route its forward through the same training loss / torch.compile as the Ray
    workers (off: HF's own loss), `fused_opt` runs torch's fused AdamW kernel (off: torch's default). With
    `share` > 1 it runs 1/share of the global batch (one of `share` processes that start timing at `barrier`)."""
    torch.set_num_threads(threads)
    precision = "bf16-mixed" if precision == "bf16" else precision  # a plain loop's bf16 is autocast
    worker_cfg = prepared.worker_config(1)
    model = build_model(worker_cfg.model, attention_for("cpu"))
    use_training_loss(model, fused=fused, compile=compile)
    # the workers' own parameter groups (no decay on norm gains), so both loops optimize the same thing
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, fused=fused_opt or None)
    micro = prepared.cfg.train.micro_batch_size * prepared.cfg.train.num_workers // share  # same global batch
    accum = prepared.cfg.train.grad_accum_steps
    blocks = torch.from_numpy(prepared.data.train).long()
    warmup, timed = 3 + 2 * compile, 0.0  # compiled: the first steps compile (cached after the first loop)
    for step in range(steps + warmup):
        if barrier is not None and step == warmup:
            barrier.wait()
        t0 = time.perf_counter()
        for i in range(accum):
            batch = blocks[((step * accum + i) * micro) % (len(blocks) - micro) :][:micro]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32"):
                loss = model(input_ids=batch, labels=batch).loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            timed += time.perf_counter() - t0
    return steps * accum * micro * blocks.shape[1] / timed


def _pair_member(queue, barrier, args) -> None:
    queue.put(plain_loop(*args, threads=1, share=2, barrier=barrier))


def plain_pair(prepared, precision: str, fused: bool, compile: bool, fused_opt: bool, steps: int) -> float:
    """Summed tokens/s of two single-thread processes, each running half the global batch through the plain loop
    at the same time, with no communication: the most two 1-thread data-parallel workers can get on this machine
    (shared caches, memory bandwidth, SMT siblings), so Ray over this isolates Ray Train + DeepSpeed's own cost."""
    ctx = multiprocessing.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(2)
    args = (prepared, precision, fused, compile, fused_opt, steps)
    members = [ctx.Process(target=_pair_member, args=(queue, barrier, args)) for _ in range(2)]
    for member in members:
        member.start()
    total = queue.get() + queue.get()
    for member in members:
        member.join()
    return total


def _deepspeed_member(rank: int, port: int, prepared, steps: int, queue) -> None:
    """One rank of deepspeed_pair: the worker's own model setup and DeepSpeed config over a gloo group of two."""
    import deepspeed
    import torch.distributed as dist

    from minigpt_ray.training.worker import build_training_model

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # as in the Ray worker: no 60 s JIT build
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    dist.init_process_group("gloo", rank=rank, world_size=2)
    deepspeed.init_distributed(dist_backend="gloo")
    config = prepared.worker_config(2)
    model, _ = build_training_model(config, torch.device("cpu"))
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, config.train.weight_decay), config=config.deepspeed
    )
    blocks = torch.from_numpy(prepared.data.train).long()
    micro, accum = config.train.micro_batch_size, config.train.grad_accum_steps
    warmup, timed = 5, 0.0  # as many as the Ray worker's steady-state skip
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        for i in range(accum):
            start = (((step * accum + i) * 2 + rank) * micro) % (len(blocks) - micro)
            batch = blocks[start : start + micro]
            engine.backward(engine(input_ids=batch, labels=batch).loss)
            engine.step()
        if step >= warmup:
            timed += time.perf_counter() - t0
    if rank == 0:
        queue.put(steps * accum * micro * 2 * blocks.shape[1] / timed)
    dist.destroy_process_group()


def deepspeed_pair(prepared, steps: int) -> float:
    """Global tokens/s of two 1-thread processes training with the Ray workers' model code and DeepSpeed config
    (ZeRO stage, precision, compile, AdamW kernel from `prepared`) over gloo, launched without Ray."""
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    members = [ctx.Process(target=_deepspeed_member, args=(rank, port, prepared, steps, queue)) for rank in (0, 1)]
    for member in members:
        member.start()
    tokens_per_s = queue.get()
    for member in members:
        member.join()
    return tokens_per_s


def ray_background(prepared, steps: int, repeats: int = 2) -> tuple[list[float], list[float]]:
    """deepspeed_pair's tokens/s without and with an idle embedded Ray (the jobs' own embedded start, dashboard on)
    holding RAY_RUN_SIDE_ACTORS idle actors, alternated `repeats` times: returns (without, with)."""
    import ray

    @ray.remote(num_cpus=0)
    class Idle:
        def ready(self) -> bool:
            return True

    without, with_ray = [], []
    for _ in range(repeats):
        without.append(deepspeed_pair(prepared, steps))
        connect_ray("")
        actors = [Idle.remote() for _ in range(RAY_RUN_SIDE_ACTORS)]
        ray.get([actor.ready.remote() for actor in actors])
        time.sleep(5)  # let start-up work settle: only the steady background should count
        with_ray.append(deepspeed_pair(prepared, steps))
        ray.shutdown()
    return without, with_ray
