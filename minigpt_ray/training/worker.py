"""The Ray Train worker loop: build model → DeepSpeed engine → resume → step over the shard → evaluate → report.

It lives in the package (not in a job script) so Ray pickles it by reference: a function defined in a script that
touches `deepspeed.ops` cannot be pickled. It receives one frozen `WorkerConfig` built by `training.prepare`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist

from minigpt_ray.modeling.distill import load_teacher
from minigpt_ray.modeling.evaluate import loss_and_perplexity, nll_sums
from minigpt_ray.modeling.lora import save_lora, trainable_parameters, with_lora
from minigpt_ray.modeling.loss import supports_fused_loss, use_training_loss
from minigpt_ray.modeling.model import attention_for, build_model, count_parameters, flops_per_token, sample_ids
from minigpt_ray.training import worker_utils as wu
from minigpt_ray.training.deepspeed_config import param_groups
from minigpt_ray.training.prepare import WorkerConfig
from minigpt_ray.training.state import TrainerState

STATE_FILE = "trainer_state.json"
SAMPLE_FILE = "sample_ids.json"
HF_MODEL_DIR = "hf_model"
ADAPTER_DIR = "adapter"
DS_TAG = "ds"
STEADY_AFTER_STEPS = 5


@dataclass
class LoopContext:
    """What the loop's helpers share: the engine, who this worker is, its state and the throughput constants."""

    engine: object
    config: WorkerConfig
    rank: int
    world: int
    device: torch.device
    state: TrainerState
    flops_per_token: float
    peak_flops: float
    board: wu.Board
    step_loss: float = 0.0
    """Loss of the last micro-batch (the divergence check's first signal)."""
    tokens_per_step: int = field(init=False)
    val_share: tuple = field(init=False)
    """(this rank's validation micro-batches, the padding forwards that even out the ranks' counts): taken from the
    object store once per run, reused by every evaluation."""

    def __post_init__(self) -> None:
        t = self.config.train
        self.tokens_per_step = self.config.block_size * t.micro_batch_size * t.grad_accum_steps * self.world
        val_blocks = ray.get(self.config.val_blocks)
        self.val_share = wu.rank_batches(val_blocks, t.micro_batch_size, t.eval_batches, self.rank, self.world)


def train_loop_per_worker(config: WorkerConfig) -> None:
    entered = time.time()
    import deepspeed

    wu.setup_worker_logging()
    # DeepSpeed would JIT-compile its shared-memory comm op (~60 s) on CPU; Ray's gloo group is all we need.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config.threads_per_worker)
    # DeepSpeed's comm layer adopts Ray's process group now (not at deepspeed.initialize): zero.Init below sizes
    # its partitions and checks the batch arithmetic against the real world size.
    deepspeed.init_distributed(dist_backend=dist.get_backend())
    model, fused = build_training_model(config, device)
    partitioned = hasattr(next(model.parameters()), "ds_id")
    n_params = count_parameters(model)
    wu.log(
        rank,
        f"{world} worker(s), device {device}, backend {dist.get_backend()}, {config.train.precision}, "
        f"ZeRO-{config.zero_stage}{' (partitioned at construction: zero.Init)' if partitioned else ''}, "
        f"{n_params:,} params, {'fused chunked' if fused else 'model'} loss"
        f"{', compiled' if config.train.compile else ''}{wu.distill_note(config.distill)}"
        f"{f', LoRA r={config.lora.r}' if config.lora else ''}",
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, config.train.weight_decay), config=config.deepspeed
    )
    state = _resume(engine, rank)
    state.timeline = {"entered": entered, "engine_ready": time.time()}
    _record_placement(state, rank, world)
    _record_build(state, engine, partitioned, fused, config.train.compile)
    loop = LoopContext(
        engine=engine,
        config=config,
        rank=rank,
        world=world,
        device=device,
        state=state,
        flops_per_token=flops_per_token(engine.module.config, n_params, config.block_size),
        peak_flops=wu.cluster_peak_flops(config.train, device),
        board=wu.Board(config, rank),
    )
    if state.step >= config.train.max_steps:
        wu.log(rank, "run already finished: its final checkpoint holds the model")
        return
    if state.step == 0:
        _evaluate_and_record(loop)
    try:
        _train_steps(loop)
        _report(loop, final=True)
    except Diverged as err:
        # Reported without a checkpoint and ended normally: Ray Train must not retry it (it would diverge again
        # from the same checkpoint) and nothing diverged may be published.
        wu.log(rank, f"stopping: {err}")
        if rank == 0:
            Path(config.divergence_file).write_text(f"{err}\n")
        ray.train.report({"step": state.step, "diverged": str(err), "final": True})
    loop.board.close()


def _resume(engine, rank: int) -> TrainerState:
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return TrainerState()
    with checkpoint.as_directory() as ckpt_dir:
        engine.load_checkpoint(ckpt_dir, tag=DS_TAG)
        state = TrainerState.from_json((Path(ckpt_dir) / STATE_FILE).read_text())
    state.resumed_from.append(state.step)
    wu.log(rank, f"resumed from checkpoint at step {state.step} ({state.tokens:,} tokens seen)")
    return state


def _record_build(state: TrainerState, engine, partitioned: bool, fused: bool, compiled: bool) -> None:
    """For metrics.json: how the model and optimizer were really built."""
    state.partitioned_at_construction, state.fused_loss, state.compiled = partitioned, fused, compiled
    state.params = count_parameters(engine.module)
    state.trainable_params = trainable_parameters(engine.module)  # all of them, or the LoRA adapters
    state.fused_optimizer = bool(engine.basic_optimizer.defaults.get("fused"))
    state.weight_decay_groups = [g["weight_decay"] for g in engine.basic_optimizer.param_groups]


def _record_placement(state: TrainerState, rank: int, world: int) -> None:
    """Which node each rank runs on, for this start of the worker group (metrics.json: placements)."""
    state.placements.append(wu.gather_strings(ray.get_runtime_context().get_node_id(), world))
    wu.log(rank, f"workers on {len(set(state.placements[-1]))} node(s)")


def build_training_model(config: WorkerConfig, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """The model as a worker trains it, before deepspeed.initialize: built (partitioned at ZeRO-3) with the training
    loss installed. Returns (model, whether the fused chunked loss is on). Needs deepspeed.init_distributed first.
    bench/train_throughput.py runs it in its no-Ray DeepSpeed baseline, so both train the same model code."""
    model = _build_model(config, device)
    if config.lora:  # adapters injected in place: the same module tree, only they train
        model = with_lora(model, config.lora)[1]
    teacher = _teacher(config, device)
    # ZeRO-3 gathers a parameter only inside its own module's forward, so the fused loss (which reads the output
    # embedding's weight directly) is for stages 0-2; config validation keeps compile off ZeRO-3 too.
    fused = config.train.fused_loss and config.zero_stage < 3 and supports_fused_loss(model)
    fused = fused and (teacher is None or supports_fused_loss(teacher[0]))
    use_training_loss(model, fused=fused, compile=config.train.compile, teacher=teacher)
    return model, fused


def _teacher(config: WorkerConfig, device: torch.device):
    """(frozen teacher, alpha, temperature) for a distillation, else None. Built outside ZeRO-3's partitioning:
    every worker holds the whole teacher, which DeepSpeed never sees (no optimizer state, no gradients)."""
    if config.distill is None:
        return None
    bf16 = config.train.precision in ("bf16", "bf16-mixed") and (device.type == "cpu" or torch.cuda.is_bf16_supported())
    teacher = load_teacher(config.distill, device, bf16, attention_for(device.type))
    return teacher, config.distill.alpha, config.distill.temperature


def _build_model(config: WorkerConfig, device: torch.device):
    """Under ZeRO-3, transformers builds (and from_pretrained loads) the model inside deepspeed.zero.Init while an
    HfDeepSpeedConfig is alive, so no worker ever holds the full weights. It is dropped on return: a model built
    later on one rank alone (the final save) must not start collective zero.Init work the other ranks never join."""
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    hf_zero3 = HfDeepSpeedConfig(config.deepspeed) if config.zero_stage == 3 else None  # noqa: F841 - held
    return build_model(config.model, attention_for(device.type))


def _train_steps(loop: LoopContext) -> None:
    engine, train, state = loop.engine, loop.config.train, loop.state
    batches = wu.endless_batches(
        ray.get(loop.config.train_blocks), train.micro_batch_size, train.seed + state.step, loop.rank, loop.world
    )
    window = wu.Window()
    state.timeline["loop_start"] = time.time()
    # Steady-state throughput skips the first steps after (re)start: allocation, data pipeline start, lazy init.
    steady = wu.Steady(from_step=state.step + STEADY_AFTER_STEPS)
    engine.train()
    while state.step < train.max_steps:
        t0, data_seconds = time.perf_counter(), 0.0
        for micro in range(train.grad_accum_steps):
            t_data = time.perf_counter()
            batch = next(batches).to(loop.device)
            data_seconds += time.perf_counter() - t_data  # taking this worker's next batch
            # Chat data carries its labels (untrained tokens masked); plain text is its own label.
            input_ids, labels = (batch[:, 0], batch[:, 1]) if batch.dim() == 3 else (batch, batch)
            loss = engine(input_ids=input_ids, labels=labels).loss
            engine.backward(loss)
            if state.step + 1 == train.max_steps and micro + 1 == train.grad_accum_steps:
                # Model-state high-water mark (weights + full gradients + optimizer states): what ZeRO shards.
                state.tensor_bytes = wu.live_tensor_bytes()
            engine.step()
            if loop.config.nan_step == state.step + 1:
                _inject_divergence(engine)
            loop.step_loss = loss.item()
            window.add(loop.step_loss)
        seconds = time.perf_counter() - t0
        state.step += 1
        window.steps += 1
        state.tokens += loop.tokens_per_step
        state.train_seconds += seconds
        if state.step > steady.from_step:
            steady.add(seconds, data_seconds)
            state.steady_tokens_per_s = steady.steps * loop.tokens_per_step / steady.seconds
            state.steady_data_wait_fraction = steady.data_seconds / steady.seconds
        if loop.config.fault:
            loop.config.fault.maybe_crash(state.step, loop.rank)
        _after_step(loop, window)
    state.timeline["loop_done"] = time.time()


def _after_step(loop: LoopContext, window: wu.Window) -> None:
    """Progress line, evaluation and checkpoint, each on its own schedule."""
    train, step = loop.config.train, loop.state.step
    last = step == train.max_steps
    if step % train.log_every == 0 or last:
        _log_progress(loop, window)
        window.reset()
    if step % train.eval_every == 0 or last:
        _evaluate_and_record(loop)
    if step % train.checkpoint_every == 0 and not last:
        _report(loop, final=False)


def _log_progress(loop: LoopContext, window: wu.Window) -> None:
    state, train = loop.state, loop.config.train
    mean_loss = wu.global_mean(window.loss, window.count, loop.device)
    elapsed = time.perf_counter() - window.start
    tokens_per_s = window.steps * loop.tokens_per_step / max(elapsed, 1e-9)
    mfu = loop.flops_per_token * tokens_per_s / loop.peak_flops
    eta = (train.max_steps - state.step) * elapsed / max(1, window.steps)
    lr = loop.engine.get_lr()[0]
    state.last_train_loss = mean_loss
    state.train_curve.append([state.step, mean_loss])
    loop.board.scalars(
        state.step, {"train/loss": mean_loss, "train/lr": lr, "train/tokens_per_s": tokens_per_s, "train/mfu": mfu}
    )
    wu.log(
        loop.rank,
        f"step {state.step}/{train.max_steps} loss {mean_loss:.4f} lr {lr:.2e} "
        f"tokens/s {tokens_per_s:,.0f} MFU {mfu:.1%} elapsed {wu.fmt_seconds(state.train_seconds)} "
        f"ETA {wu.fmt_seconds(eta)}",
    )


def _evaluate_and_record(loop: LoopContext) -> None:
    state = loop.state
    mine, padding = loop.val_share
    total_nll, total_tokens = nll_sums(loop.engine.module, mine, loop.device)
    # Every rank runs the same number of forwards: under ZeRO-3 each forward gathers parameters collectively.
    nll_sums(loop.engine.module, padding, loop.device)
    sums = torch.tensor([total_nll, float(total_tokens)], dtype=torch.float64, device=loop.device)
    dist.all_reduce(sums)
    val_loss, val_ppl = loss_and_perplexity(sums[0].item(), int(sums[1].item()))
    tokens_per_s = state.tokens / max(state.train_seconds, 1e-9) if state.step else 0.0
    state.history.append(
        {
            "step": state.step,
            "tokens": state.tokens,
            "val_loss": val_loss,
            "val_ppl": val_ppl,
            "val_tokens": int(sums[1].item()),  # predicted tokens counted (chat data: the replies' only)
            "train_loss": state.last_train_loss,
            "tokens_per_s": tokens_per_s,
            "mfu": loop.flops_per_token * tokens_per_s / loop.peak_flops,
            "train_seconds": state.train_seconds,
        }
    )
    loop.board.scalars(state.step, {"val/loss": val_loss, "val/perplexity": val_ppl})
    wu.log(
        loop.rank,
        f"eval step {state.step}: val_loss {val_loss:.4f} val_ppl {val_ppl:.2f} ({int(sums[1].item()):,} tokens)",
    )


def _inject_divergence(engine) -> None:
    """Test-only ($MINIGPT_RAY_FAULT=nan-at-step:N): NaN weights, as a blown-up update leaves them. (NaN gradients
    alone do not do it: DeepSpeed skips a step whose gradient norm is not finite.)"""
    weight = next(p for p in engine.module.parameters() if p.numel())
    with torch.no_grad():
        weight.fill_(float("nan"))


class Diverged(Exception):
    """Loss or weights stopped being finite: the run stops without reporting a checkpoint."""


def _check_finite(loop: LoopContext) -> None:
    """Raise Diverged on every rank when any rank's last loss, validation loss or weights are NaN/inf."""
    val = loop.state.history[-1].get("val_loss") if loop.state.history else None
    losses = [v for v in (loop.step_loss, val) if v is not None]
    weights = all(torch.isfinite(p).all() for p in loop.engine.module.parameters() if p.numel())
    local_bad = not (all(math.isfinite(v) for v in losses) and weights)
    if any(flag[0] for flag in wu.gather_floats([float(local_bad)], loop.device, loop.world)):
        what = f"loss {loop.step_loss}, validation loss {val}" + ("" if weights else ", non-finite weights")
        raise Diverged(f"training diverged at step {loop.state.step} ({what}); lower train.lr or raise warmup")


def _report(loop: LoopContext, final: bool) -> None:
    """Every rank writes its DeepSpeed shards into its own temp dir; Ray Train merges them into one checkpoint.
    Nothing is saved from a diverged state (checked on every rank first)."""
    _check_finite(loop)
    engine, state, rank = loop.engine, loop.state, loop.rank
    metrics = dict(state.history[-1]) if state.history else {"step": state.step}
    metrics.update(
        step=state.step,
        final=final,
        peak_rss_bytes=wu.peak_rss_bytes(),
        tensor_bytes=state.tensor_bytes or wu.live_tensor_bytes(),
    )
    metrics = {k: v for k, v in metrics.items() if v is not None}
    memory = wu.gather_floats([metrics["peak_rss_bytes"], metrics["tensor_bytes"]], loop.device, loop.world)
    state.peak_rss_bytes_per_worker = [m[0] for m in memory]
    state.tensor_bytes_per_worker = [m[1] for m in memory]
    with tempfile.TemporaryDirectory(prefix="minigpt-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=DS_TAG)
        full_state = wu.full_state_dict(engine, loop.config.zero_stage, rank) if final else None
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(state.to_json())
            if final:
                _save_final_model(loop, full_state, Path(tmp))
        # Ray names the directory (by time), so a step redone after a restart never lands on an existing one.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _save_final_model(loop: LoopContext, full_state: dict, directory: Path) -> None:
    """The HF model (merged, for a LoRA run) and, for a LoRA run, its adapter, into the final checkpoint; then the
    end-of-run sample from that model, while it is in memory (the driver decodes the ids: no second load)."""
    config = loop.engine.module.config
    if loop.config.lora:
        model = save_lora(config, full_state, loop.config.lora, directory / HF_MODEL_DIR, directory / ADAPTER_DIR)
    else:
        model = wu.save_hf_model(config, full_state, directory / HF_MODEL_DIR)
    if loop.config.sample:
        (directory / SAMPLE_FILE).write_text(json.dumps(sample_ids(model, loop.config.sample)))
