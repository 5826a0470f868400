"""Orchestration of one training run on Ray: prepare (no Ray) → connect → check resources → TorchTrainer with
DeepSpeed workers → consolidated HF model + metrics.json written atomically under `--output`."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import ray
import ray.data
import yaml
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from minigpt_ray.config import ConfigError
from minigpt_ray.config import RunConfig as JobConfig
from minigpt_ray.model import count_parameters, sample_text
from minigpt_ray.outputs import atomic_directory, atomic_write_text
from minigpt_ray.prepare import PreparedRun, prepare_run, saved_tokenizer_dir
from minigpt_ray.ray_cluster import connect_ray
from minigpt_ray.tokenizer import save_tokenizer
from minigpt_ray.train_worker import HF_MODEL_DIR, STATE_FILE, train_loop_per_worker


def resolve_use_gpu(setting: str) -> bool:
    if setting == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return setting == "true"


def check_resources(train, use_gpu: bool) -> None:
    """Fail before any worker starts when the workers cannot all be placed on the cluster as it is now."""
    if not train.check_resources:
        return
    total = ray.cluster_resources()
    need_cpu = train.num_workers * train.cpus_per_worker
    if need_cpu > total.get("CPU", 0):
        raise ConfigError(f"train.num_workers: {train.num_workers} workers x {train.cpus_per_worker:g} CPU need "
                          f"{need_cpu:g} CPUs, the cluster has {total.get('CPU', 0):g} (or lower "
                          "train.cpus_per_worker; set train.check_resources=false on an autoscaling cluster)")
    if use_gpu and train.num_workers > total.get("GPU", 0):
        raise ConfigError(f"train.num_workers: {train.num_workers} GPU workers need {train.num_workers} GPUs, the "
                          f"cluster has {total.get('GPU', 0):g}")


def storage_path(output: str) -> str:
    return str(Path(output).resolve() / "checkpoints")  # Ray Train storage must be absolute


def build_trainer(prepared: PreparedRun, use_gpu: bool, crash_once: dict | None = None) -> TorchTrainer:
    cfg = prepared.cfg
    train = cfg.train
    resources = {"CPU": train.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    ray.data.DataContext.get_current().enable_progress_bars = False  # bars garble the job log; steps are logged
    datasets = {"train": ray.data.from_numpy(prepared.data.train), "val": ray.data.from_numpy(prepared.data.val)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=prepared.worker_config(train.num_workers, crash_once),
        torch_config=TorchConfig(),  # backend chosen by device: nccl on GPU workers, gloo on CPU
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.run_name or Path(cfg.output.rstrip("/")).name,
            storage_path=storage_path(cfg.output),
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
        ),
        datasets=datasets,
        # Only the training set is sharded; every worker sees the whole validation set and evaluates its share.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def run_training(cfg: JobConfig, crash_once: dict | None = None) -> dict:
    """Run (or resume) training; returns the metrics also written to `<output>/metrics.json`.

    `crash_once` ({"step", "marker", "world"}) makes one worker die once at that step: used by the resume test.
    """
    started = time.time()
    prepared = prepare_run(cfg)
    print(f"[minigpt_ray] data: {json.dumps(prepared.data.stats)}", flush=True)
    connect_ray(cfg.ray_address)
    use_gpu = resolve_use_gpu(cfg.train.use_gpu)
    check_resources(cfg.train, use_gpu)
    if not saved_tokenizer_dir(cfg.output).is_dir():
        with atomic_directory(saved_tokenizer_dir(cfg.output)) as staging:
            save_tokenizer(prepared.tokenizer, staging)
    if crash_once is not None:
        crash_once = dict(crash_once, world=cfg.train.num_workers)
    result = build_trainer(prepared, use_gpu, crash_once).fit()
    return finalize(prepared, result, use_gpu, time.time() - started)


def finalize(prepared: PreparedRun, result, use_gpu: bool, wall_seconds: float) -> dict:
    cfg = prepared.cfg
    output = Path(cfg.output)
    model_dir = output / "model"
    with result.checkpoint.as_directory() as ckpt_dir:
        state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
        with atomic_directory(model_dir) as staging:
            shutil.copytree(Path(ckpt_dir) / HF_MODEL_DIR, staging, dirs_exist_ok=True)
            save_tokenizer(prepared.tokenizer, staging)
    metrics = summarize(prepared, state, use_gpu, wall_seconds)
    metrics["checkpoint"] = result.checkpoint.path
    if cfg.sample_prompt:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
        metrics["sample"] = {"prompt": cfg.sample_prompt, "temperature": 0.8, "top_k": 40, "seed": cfg.train.seed,
                             "completion": sample_text(model, prepared.tokenizer, cfg.sample_prompt,
                                                       cfg.sample_tokens, seed=cfg.train.seed)}
        metrics["parameters"] = count_parameters(model)
    atomic_write_text(output / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(output / "run_config.yaml", yaml.safe_dump(cfg.to_dict(), allow_unicode=True, sort_keys=False))
    return metrics


def summarize(prepared: PreparedRun, state: dict, use_gpu: bool, wall_seconds: float) -> dict:
    history = state["history"]
    first, last = history[0], history[-1]
    train = prepared.cfg.train
    return {
        "initial_val_loss": first["val_loss"], "initial_val_ppl": first["val_ppl"],
        "final_val_loss": last["val_loss"], "final_val_ppl": last["val_ppl"],
        "final_train_loss": state.get("last_train_loss"),
        "steps": state["step"], "train_tokens": state["tokens"],
        "tokens_per_s": state["tokens"] / max(state["train_seconds"], 1e-9), "mfu": last["mfu"],
        "train_seconds": state["train_seconds"], "wall_seconds": wall_seconds,
        "peak_rss_bytes_per_worker": state.get("peak_rss_bytes_per_worker"),
        "tensor_bytes_per_worker": state.get("tensor_bytes_per_worker"),
        "steady_tokens_per_s": state.get("steady_tokens_per_s"),
        "steady_data_wait_fraction": state.get("steady_data_wait_fraction"),  # rank 0's share of step time
        "num_workers": train.num_workers, "use_gpu": use_gpu, "zero_stage": train.zero_stage,
        "partitioned_at_construction": state.get("partitioned_at_construction", False),
        "fused_loss": state.get("fused_loss", False), "compiled": state.get("compiled", False),
        "fused_optimizer": state.get("fused_optimizer", False),
        "precision": train.precision, "model": prepared.cfg.model.name, "data": prepared.data.stats,
        "history": history, "train_curve": state.get("train_curve", []),
    }
