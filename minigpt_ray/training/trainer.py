"""Orchestration of one training run on Ray: prepare (no Ray) → connect → check resources → TorchTrainer with
DeepSpeed workers → consolidated HF model + metrics.json written atomically under `--output`."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from minigpt_ray.config import ConfigError, TrainJobConfig, to_yaml
from minigpt_ray.logs import get_logger
from minigpt_ray.modeling.distill import build_student
from minigpt_ray.modeling.model import count_parameters, cpu_has_native_bf16
from minigpt_ray.modeling.tokenizer import save_tokenizer
from minigpt_ray.outputs import atomic_directory, atomic_write_text
from minigpt_ray.training.fingerprint import check_or_record, run_fingerprint
from minigpt_ray.training.prepare import DIVERGENCE_FILE, PreparedRun, prepare_run, saved_tokenizer_dir, student_dir
from minigpt_ray.training.startup import prepare_while_ray_starts
from minigpt_ray.training.state import TrainerState
from minigpt_ray.training.worker import ADAPTER_DIR, HF_MODEL_DIR, SAMPLE_FILE, STATE_FILE, train_loop_per_worker

log = get_logger()


def resolve_use_gpu(setting: str) -> bool:
    if setting == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return setting == "true"


def resolve_precision(setting: str, use_gpu: bool) -> str:
    """`auto`: bf16-mixed on GPUs and on CPUs with bf16 in hardware, fp32 elsewhere; other settings as given (a bf16
    setting on a CPU without it is kept, with a warning: it is the user's choice, and a slow one)."""
    native = use_gpu or cpu_has_native_bf16()
    if setting == "auto":
        return "bf16-mixed" if native else "fp32"
    if setting.startswith("bf16") and not native:
        log.warning("train.precision %s: this CPU has no bf16 matmul instructions; fp32 is much faster here", setting)
    return setting


def check_resources(train, use_gpu: bool) -> None:
    """Fail before any worker starts when the workers cannot all be placed on the cluster as it is now, or when the
    precision needs GPUs that `use_gpu: auto` did not find."""
    if train.precision == "fp16" and not use_gpu:
        raise ConfigError(
            f"train.precision: fp16 needs GPU workers and use_gpu={train.use_gpu} runs on CPU here (use bf16-mixed)"
        )
    if not train.check_resources:
        return
    total = ray.cluster_resources()
    need_cpu = train.num_workers * train.cpus_per_worker
    if need_cpu > total.get("CPU", 0):
        raise ConfigError(
            f"train.num_workers: {train.num_workers} workers x {train.cpus_per_worker:g} CPU need "
            f"{need_cpu:g} CPUs, the cluster has {total.get('CPU', 0):g} (or lower "
            "train.cpus_per_worker; set train.check_resources=false on an autoscaling cluster)"
        )
    if train.placement_strategy == "STRICT_SPREAD":
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= train.cpus_per_worker]
        if len(nodes) < train.num_workers:
            raise ConfigError(
                f"train.placement_strategy: STRICT_SPREAD needs {train.num_workers} nodes with "
                f"{train.cpus_per_worker:g} CPU each, the cluster has {len(nodes)}"
            )
    if use_gpu and train.num_workers > total.get("GPU", 0):
        raise ConfigError(
            f"train.num_workers: {train.num_workers} GPU workers need {train.num_workers} GPUs, the "
            f"cluster has {total.get('GPU', 0):g}"
        )


def run_name(cfg: TrainJobConfig) -> str:
    """Ray Train's run name: the setting, else the output directory's name."""
    return cfg.run_name or Path(cfg.output.rstrip("/")).name


def storage_path(output: str) -> str:
    return str(Path(output).resolve() / "checkpoints")  # Ray Train storage must be absolute


def build_trainer(prepared: PreparedRun, use_gpu: bool) -> TorchTrainer:
    cfg = prepared.cfg
    train = cfg.train
    resources = {"CPU": train.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    # The packed blocks go to the workers through the object store, each worker taking a fixed share: they are
    # in memory already, and a Ray Dataset would add two coordinator actors and seconds to every run's start.
    blocks = {"train_blocks": ray.put(prepared.data.train), "val_blocks": ray.put(prepared.data.val)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=replace(prepared.worker_config(train.num_workers), **blocks),
        torch_config=TorchConfig(),  # backend chosen by device: nccl on GPU workers, gloo on CPU
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=train.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_name(cfg),
            storage_path=storage_path(cfg.output),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.keep_checkpoints),
        ),
    )


class TrainingDiverged(RuntimeError):
    """The run stopped on NaN/inf loss or weights; no model was published (an earlier model/ is untouched)."""


def write_derived_student(prepared: PreparedRun) -> None:
    """The student derived from the teacher (distill.student_layers), as an HF directory the workers load."""
    cfg = prepared.cfg
    student, layers = build_student(
        prepared.teacher.location, prepared.model_config, cfg.distill.init_from_teacher, cfg.train.seed
    )
    with atomic_directory(student_dir(cfg.output)) as staging:
        student.save_pretrained(staging)
        save_tokenizer(prepared.tokenizer, staging)
    start = f"the teacher's layers {layers} and embeddings" if layers else "random weights"
    log.info("student: %s, %s parameters, from %s", prepared.source.name, f"{count_parameters(student):,}", start)


def run_training(cfg: TrainJobConfig) -> dict:
    """Run (or resume) training; returns the metrics also written to `<output>/metrics.json`."""
    started = time.time()
    return run_prepared(prepare_while_ray_starts(cfg, prepare_run), started)


def run_prepared(prepared: PreparedRun, started: float) -> dict:
    """The run once its data is prepared and Ray is up (`startup.prepare_while_ray_starts`); `started`: when the
    job began, for the phase timings. The CLI calls this directly, having imported this module beside Ray's start."""
    cfg = prepared.cfg
    clock = {"started": started, "prepared": time.time()}
    log.info(
        "data: %s; cache: tokenizer %s, blocks %s (%.1f s, Ray started alongside)",
        json.dumps(prepared.data.stats),
        prepared.tokenizer_origin,
        prepared.data.cache,
        clock["prepared"] - clock["started"],
    )
    use_gpu = resolve_use_gpu(cfg.train.use_gpu)
    cfg.train.precision = resolve_precision(cfg.train.precision, use_gpu)  # what the workers and metrics see
    check_resources(cfg.train, use_gpu)
    if not saved_tokenizer_dir(cfg.output).is_dir():
        with atomic_directory(saved_tokenizer_dir(cfg.output)) as staging:
            save_tokenizer(prepared.tokenizer, staging)
    # Before any worker starts: checkpoints of another run (model, data, layout) must not be resumed.
    check_or_record(Path(storage_path(cfg.output)) / run_name(cfg), run_fingerprint(prepared), cfg.output)
    if prepared.derived_student and not student_dir(cfg.output).is_dir():
        write_derived_student(prepared)
    diverged = Path(cfg.output) / DIVERGENCE_FILE
    diverged.unlink(missing_ok=True)  # a record of an earlier run, not of this one
    clock["fit"] = time.time()
    result = build_trainer(prepared, use_gpu).fit()
    clock["fitted"] = time.time()
    if diverged.is_file():
        raise TrainingDiverged(diverged.read_text().strip())
    return finalize(prepared, result, use_gpu, clock)


def phase_seconds(clock: dict[str, float], worker: dict[str, float]) -> dict[str, float]:
    """Where a run's wall time went, from the driver's clock and rank 0's timeline (`TrainerState.timeline`, the
    last start of the workers): everything but `training` is the fixed cost of a run."""
    marks = [
        ("prepare", clock["started"], clock["prepared"]),  # corpus, tokenizer, packing; Ray starts meanwhile
        ("checks", clock["prepared"], clock["fit"]),  # resources, fingerprint, tokenizer written
        ("workers_start", clock["fit"], worker.get("entered")),  # Ray Train controller, worker group, gloo/nccl
        ("engine_build", worker.get("entered"), worker.get("engine_ready")),  # imports, model, DeepSpeed
        ("first_eval", worker.get("engine_ready"), worker.get("loop_start")),
        ("training", worker.get("loop_start"), worker.get("loop_done")),  # steps, periodic evals and checkpoints
        ("final_save", worker.get("loop_done"), clock["fitted"]),  # last checkpoint and HF export
        ("finish", clock["fitted"], clock["finished"]),  # copy out the model, the sample, metrics.json
    ]
    return {name: round(end - start, 2) for name, start, end in marks if start is not None and end is not None}


def finalize(prepared: PreparedRun, result, use_gpu: bool, clock: dict[str, float]) -> dict:
    cfg = prepared.cfg
    output = Path(cfg.output)
    model_dir = output / "model"
    with result.checkpoint.as_directory() as ckpt_dir:
        state = TrainerState.from_json((Path(ckpt_dir) / STATE_FILE).read_text())
        sample_file = Path(ckpt_dir) / SAMPLE_FILE  # drawn by rank 0 from the final model while it was in memory
        sample = json.loads(sample_file.read_text()) if sample_file.is_file() else None
        for source, target in ((HF_MODEL_DIR, model_dir), (ADAPTER_DIR, output / "adapter")):
            if (Path(ckpt_dir) / source).is_dir():  # adapter/: LoRA runs only
                with atomic_directory(target) as staging:
                    shutil.copytree(Path(ckpt_dir) / source, staging, dirs_exist_ok=True)
                    save_tokenizer(prepared.tokenizer, staging)
    metrics = summarize(prepared, state, use_gpu, clock["fitted"] - clock["started"])
    metrics["checkpoint"] = result.checkpoint.path
    spec = prepared.sample_spec()
    if spec and sample is not None:
        metrics["sample"] = {
            "prompt": cfg.sample_prompt,
            "temperature": spec.temperature,
            "top_k": spec.top_k,
            "seed": spec.seed,
            "completion": prepared.tokenizer.decode(sample, skip_special_tokens=True),
        }
    clock["finished"] = time.time()
    phases = metrics["phase_seconds"] = phase_seconds(clock, state.timeline)
    metrics["fixed_seconds"] = round(clock["finished"] - clock["started"] - phases.get("training", 0.0), 2)
    log.info(
        "wall time %.1f s: training %.1f s, fixed cost %.1f s (%s)",
        clock["finished"] - clock["started"],
        phases.get("training", 0.0),
        metrics["fixed_seconds"],
        ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items() if name != "training"),
    )
    atomic_write_text(output / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(output / "run_config.yaml", to_yaml(cfg))
    return metrics


def summarize(prepared: PreparedRun, state: TrainerState, use_gpu: bool, wall_seconds: float) -> dict:
    first, last = state.history[0], state.history[-1]
    train = prepared.cfg.train
    return {
        "initial_val_loss": first["val_loss"],
        "initial_val_ppl": first["val_ppl"],
        "final_val_loss": last["val_loss"],
        "final_val_ppl": last["val_ppl"],
        "final_train_loss": state.last_train_loss,
        "steps": state.step,
        "train_tokens": state.tokens,
        "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
        "mfu": last["mfu"],
        "train_seconds": state.train_seconds,
        "wall_seconds": wall_seconds,
        "peak_rss_bytes_per_worker": state.peak_rss_bytes_per_worker,
        "tensor_bytes_per_worker": state.tensor_bytes_per_worker,
        "steady_tokens_per_s": state.steady_tokens_per_s,
        "steady_data_wait_fraction": state.steady_data_wait_fraction,  # rank 0's share of step time
        "num_workers": train.num_workers,
        "resumed_from": state.resumed_from,
        "placements": state.placements,  # each (re)start of the workers: the node id of every rank
        "use_gpu": use_gpu,
        "zero_stage": train.zero_stage,
        "params": state.params,
        "trainable_params": state.trainable_params,
        "lora_r": prepared.cfg.lora.r,
        "partitioned_at_construction": state.partitioned_at_construction,
        "fused_loss": state.fused_loss,
        "compiled": state.compiled,
        "fused_optimizer": state.fused_optimizer,
        "weight_decay_groups": state.weight_decay_groups,
        "precision": train.precision,
        "model": prepared.cfg.model.name,
        "data": prepared.data.stats,
        "history": state.history,
        "train_curve": state.train_curve,
    }
