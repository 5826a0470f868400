"""The Ray Train worker loop: build model → DeepSpeed engine → resume → step over the shard → evaluate → report.

It lives in the package (not in a job script) so Ray pickles it by reference: a function defined in a script that
touches `deepspeed.ops` cannot be pickled. It receives one plain dict built by `minigpt_ray.train`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from minigpt_ray import train_utils as wu
from minigpt_ray.evaluate import loss_and_perplexity, nll_sums
from minigpt_ray.loss import supports_fused_loss, use_training_loss
from minigpt_ray.model import attention_for, build_model, count_parameters, flops_per_token

STATE_FILE = "trainer_state.json"
HF_MODEL_DIR = "hf_model"
DS_TAG = "ds"
STEADY_AFTER_STEPS = 5


def train_loop_per_worker(config: dict) -> None:
    import deepspeed

    wu.quiet_worker_logs()

    # DeepSpeed would JIT-compile its shared-memory comm op (~60 s) on CPU; Ray's gloo group is all we need.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config["threads_per_worker"])

    zero_stage = config["deepspeed"]["zero_optimization"]["stage"]
    # DeepSpeed's comm layer adopts Ray's process group now (not at deepspeed.initialize): zero.Init below sizes
    # its partitions and checks the batch arithmetic against the real world size.
    deepspeed.init_distributed(dist_backend=dist.get_backend())
    model, fused = build_training_model(config, device)
    partitioned = hasattr(next(model.parameters()), "ds_id")
    n_params = count_parameters(model)
    wu.log(rank, f"{world} worker(s), device {device}, backend {dist.get_backend()}, "
                 f"{config['train']['precision']}, ZeRO-{zero_stage}"
                 f"{' (partitioned at construction: zero.Init)' if partitioned else ''}, {n_params:,} params, "
                 f"{'fused chunked' if fused else 'model'} loss{', compiled' if config['train']['compile'] else ''}")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=config["deepspeed"])
    state = {"step": 0, "tokens": 0, "train_seconds": 0.0, "history": [], "resumed_from": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            engine.load_checkpoint(ckpt_dir, tag=DS_TAG)
            state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
        state["resumed_from"].append(state["step"])
        wu.log(rank, f"resumed from checkpoint at step {state['step']} ({state['tokens']:,} tokens seen)")

    # Recorded for metrics.json: ZeRO-3 parameters are DeepSpeed-partitioned from construction on.
    state["partitioned_at_construction"] = partitioned
    state["fused_loss"], state["compiled"] = fused, config["train"]["compile"]
    # What DeepSpeed actually built (its ZeRO wrapper holds torch's AdamW as basic_optimizer).
    state["fused_optimizer"] = bool(engine.basic_optimizer.defaults.get("fused"))
    peak_flops = wu.cluster_peak_flops(config, device, world)
    flops_tok = flops_per_token(engine.module.config, n_params, config["block_size"])
    context = dict(engine=engine, config=config, rank=rank, world=world, device=device, state=state,
                   flops_tok=flops_tok, peak_flops=peak_flops)
    if state["step"] >= config["train"]["max_steps"]:
        wu.log(rank, "run already finished: its final checkpoint holds the model")
        return
    if state["step"] == 0:
        _evaluate_and_record(context)
    _train_steps(context)
    _report(context, final=True)


def build_training_model(config: dict, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """The model as a worker trains it, before deepspeed.initialize: built (partitioned at ZeRO-3) with the training
    loss installed. Returns (model, whether the fused chunked loss is on). Needs deepspeed.init_distributed first.
    bench/train_throughput.py runs it in its no-Ray DeepSpeed baseline, so both train the same model code."""
    zero_stage = config["deepspeed"]["zero_optimization"]["stage"]
    model = _build_model(config, device, zero_stage)
    # ZeRO-3 gathers a parameter only inside its own module's forward, so the fused loss (which reads the output
    # embedding's weight directly) is for stages 0-2; config validation keeps compile off ZeRO-3 too.
    fused = config["train"]["fused_loss"] and zero_stage < 3 and supports_fused_loss(model)
    use_training_loss(model, fused=fused, compile=config["train"]["compile"])
    return model, fused


def _build_model(config: dict, device: torch.device, zero_stage: int):
    """Under ZeRO-3, transformers builds (and from_pretrained loads) the model inside deepspeed.zero.Init while an
    HfDeepSpeedConfig is alive, so no worker ever holds the full weights. It is dropped on return: a model built
    later on one rank alone (the final save) must not start collective zero.Init work the other ranks never join."""
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    hf_zero3 = HfDeepSpeedConfig(config["deepspeed"]) if zero_stage == 3 else None  # noqa: F841 - held while building
    return build_model(config["model"], attention_for(device.type))


def _train_steps(ctx: dict) -> None:
    engine, config, state = ctx["engine"], ctx["config"], ctx["state"]
    train_cfg = config["train"]
    batches = wu.endless_batches(ray.train.get_dataset_shard("train"), train_cfg["micro_batch_size"],
                                 seed=train_cfg["seed"] + state["step"])
    tokens_per_step = config["block_size"] * train_cfg["micro_batch_size"] * train_cfg["grad_accum_steps"] * ctx["world"]
    window = {"loss": 0.0, "n": 0, "start": time.perf_counter(), "steps": 0}
    # Steady-state throughput skips the first steps after (re)start: allocation, data pipeline start, lazy init.
    steady = {"from_step": state["step"] + STEADY_AFTER_STEPS, "seconds": 0.0, "steps": 0, "data_seconds": 0.0}
    engine.train()
    while state["step"] < train_cfg["max_steps"]:
        t0, data_seconds = time.perf_counter(), 0.0
        for micro in range(train_cfg["grad_accum_steps"]):
            t_data = time.perf_counter()
            input_ids = next(batches).to(ctx["device"])
            data_seconds += time.perf_counter() - t_data  # waiting on this worker's Ray Data shard
            loss = engine(input_ids=input_ids, labels=input_ids).loss
            engine.backward(loss)
            if state["step"] + 1 == train_cfg["max_steps"] and micro + 1 == train_cfg["grad_accum_steps"]:
                # Model-state high-water mark (weights + full gradients + optimizer states): what ZeRO shards.
                state["tensor_bytes"] = wu.live_tensor_bytes()
            engine.step()
            window["loss"] += loss.item()
            window["n"] += 1
        state["step"] += 1
        state["tokens"] += tokens_per_step
        state["train_seconds"] += time.perf_counter() - t0
        if state["step"] > steady["from_step"]:
            steady["seconds"] += time.perf_counter() - t0
            steady["steps"] += 1
            steady["data_seconds"] += data_seconds
            state["steady_tokens_per_s"] = steady["steps"] * tokens_per_step / steady["seconds"]
            state["steady_data_wait_fraction"] = steady["data_seconds"] / steady["seconds"]
        window["steps"] += 1
        wu.maybe_crash(config.get("crash_once"), state["step"], ctx["rank"])
        step = state["step"]
        if step % train_cfg["log_every"] == 0 or step == train_cfg["max_steps"]:
            _log_progress(ctx, window, tokens_per_step)
            window.update(loss=0.0, n=0, start=time.perf_counter(), steps=0)
        if step % train_cfg["eval_every"] == 0 or step == train_cfg["max_steps"]:
            _evaluate_and_record(ctx)
        if step % train_cfg["checkpoint_every"] == 0 and step != train_cfg["max_steps"]:
            _report(ctx, final=False)


def _log_progress(ctx: dict, window: dict, tokens_per_step: int) -> None:
    engine, state, train_cfg = ctx["engine"], ctx["state"], ctx["config"]["train"]
    mean_loss = wu.global_mean(window["loss"], window["n"], ctx["device"])
    elapsed = time.perf_counter() - window["start"]
    tokens_per_s = window["steps"] * tokens_per_step / max(elapsed, 1e-9)
    mfu = ctx["flops_tok"] * tokens_per_s / ctx["peak_flops"]
    eta = (train_cfg["max_steps"] - state["step"]) * elapsed / max(1, window["steps"])
    state["last_train_loss"] = mean_loss
    state.setdefault("train_curve", []).append([state["step"], mean_loss])  # [step, mean loss since last log]
    wu.log(ctx["rank"], f"step {state['step']}/{train_cfg['max_steps']} loss {mean_loss:.4f} "
                        f"lr {engine.get_lr()[0]:.2e} tokens/s {tokens_per_s:,.0f} MFU {mfu:.1%} "
                        f"elapsed {wu.fmt_seconds(state['train_seconds'])} ETA {wu.fmt_seconds(eta)}")


def _evaluate_and_record(ctx: dict) -> None:
    config, state = ctx["config"], ctx["state"]
    mine, padding = wu.rank_batches(ray.train.get_dataset_shard("val"), config["train"]["micro_batch_size"],
                                    config["train"]["eval_batches"], ctx["rank"], ctx["world"])
    total_nll, total_tokens = nll_sums(ctx["engine"].module, mine, ctx["device"])
    # Every rank runs the same number of forwards: under ZeRO-3 each forward gathers parameters collectively.
    nll_sums(ctx["engine"].module, padding, ctx["device"])
    sums = torch.tensor([total_nll, float(total_tokens)], dtype=torch.float64, device=ctx["device"])
    dist.all_reduce(sums)
    val_loss, val_ppl = loss_and_perplexity(sums[0].item(), int(sums[1].item()))
    train_seconds = max(state["train_seconds"], 1e-9)
    tokens_per_s = state["tokens"] / train_seconds if state["step"] else 0.0
    record = {"step": state["step"], "tokens": state["tokens"], "val_loss": val_loss, "val_ppl": val_ppl,
              "train_loss": state.get("last_train_loss"), "tokens_per_s": tokens_per_s,
              "mfu": ctx["flops_tok"] * tokens_per_s / ctx["peak_flops"], "train_seconds": state["train_seconds"]}
    state["history"].append(record)
    wu.log(ctx["rank"], f"eval step {state['step']}: val_loss {val_loss:.4f} val_ppl {val_ppl:.2f} "
                        f"({int(sums[1].item()):,} tokens)")


def _report(ctx: dict, final: bool) -> None:
    """Every rank writes its DeepSpeed shards into its own temp dir; Ray Train merges them into one checkpoint."""
    engine, state, rank = ctx["engine"], ctx["state"], ctx["rank"]
    metrics = dict(state["history"][-1]) if state["history"] else {"step": state["step"]}
    metrics.update(step=state["step"], final=final, peak_rss_bytes=wu.peak_rss_bytes(),
                   tensor_bytes=state.get("tensor_bytes") or wu.live_tensor_bytes())
    metrics = {k: v for k, v in metrics.items() if v is not None}
    memory = wu.gather_floats([metrics["peak_rss_bytes"], metrics["tensor_bytes"]], ctx["device"], ctx["world"])
    state["peak_rss_bytes_per_worker"] = [m[0] for m in memory]
    state["tensor_bytes_per_worker"] = [m[1] for m in memory]
    with tempfile.TemporaryDirectory(prefix="minigpt-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=DS_TAG)
        full_state = wu.full_state_dict(engine, ctx["config"]["deepspeed"]["zero_optimization"]["stage"], rank) \
            if final else None
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            if final:
                wu.save_hf_model(engine.module.config, full_state, Path(tmp) / HF_MODEL_DIR)
        # Ray names the directory (by time), so a step redone after a restart never lands on an existing one.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    if not math.isfinite(metrics.get("val_loss", 0.0)):
        raise FloatingPointError(f"validation loss is {metrics['val_loss']} at step {state['step']}: lower train.lr")
