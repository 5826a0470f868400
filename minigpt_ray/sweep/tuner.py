"""Ray Tune orchestration of the compression sweep: prepare (no Ray) → baseline → trials → Pareto → winner.

Each trial is one Ray task with declared CPUs: it loads the fine-tuned model, builds one candidate with
`minigpt_ray.compress`, measures the saved artifact and reports metrics plus the artifact as a Tune checkpoint
(so it lands in Tune's storage, also on a cluster). A trial that raises is recorded as failed; the sweep goes on.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from minigpt_ray.compress.artifact import MANIFEST, read_manifest
from minigpt_ray.compress.candidate import CalibrationData, make_candidate
from minigpt_ray.compress.distill import StudentTraining
from minigpt_ray.config import CandidateError, CandidateSpec, SweepJobConfig
from minigpt_ray.config.sweep import OBJECTIVE_MODES, search_choices
from minigpt_ray.export.llamacpp import GGUF_METRICS, measure_gguf
from minigpt_ray.faults import trial_fault
from minigpt_ray.logs import get_logger
from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.outputs import atomic_directory, atomic_write_text, remove_directory
from minigpt_ray.sweep.pareto import (
    SERVED_SOURCES,
    NoWinnerError,
    add_ratios,
    choose_winner,
    constraint_text,
    pareto_front,
    write_reports,
)
from minigpt_ray.sweep.prepare import SweepInputs, load_base_model, prepare_sweep

SPEC_FIELDS = [f.name for f in fields(CandidateSpec)]
SERVED_METRICS = ("served_runtime", *SERVED_SOURCES)
log = get_logger()


@dataclass(frozen=True)
class TrialSettings:
    """What every trial needs besides its candidate settings (frozen, defined in the package: pickles by reference)."""

    model: str
    """Absolute directory (or hub id) of the model to compress."""
    recovery_lr: float
    decode_tokens: int
    seed: int
    threads: int
    students: StudentTraining = field(default_factory=StudentTraining)
    """How distilled students are trained (the sweep's distill_* settings)."""
    fail_when: dict | None = None
    """Injected failure: trials whose settings match raise (from $MINIGPT_RAY_FAULT; None in normal runs)."""


def sweep_trial(config: dict, data: CalibrationData, settings: TrialSettings) -> None:
    """One Tune trial (runs in a Ray worker process). `config` is Tune's sample of the search space."""
    from ray import tune

    torch.set_num_threads(settings.threads)
    spec = CandidateSpec(**{k: _flatten_trial(config)[k] for k in SPEC_FIELDS}).normalized()
    if settings.fail_when and all(getattr(spec, k) == v for k, v in settings.fail_when.items()):
        raise RuntimeError(f"injected failure for {spec.label()}")
    base = load_base_model(settings.model)
    tokenizer = load_tokenizer(settings.model)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "candidate"
        metrics = make_candidate(
            base,
            tokenizer,
            spec,
            artifact,
            data,
            settings.recovery_lr,
            settings.decode_tokens,
            settings.seed,
            settings.students,
        )
        metrics |= _measure_served_form(artifact, metrics, data, settings.decode_tokens, settings.threads)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(artifact)))


def _measure_served_form(
    artifact: Path, pytorch: dict, data: CalibrationData, decode_tokens: int, threads: int
) -> dict:
    """The candidate as it will be served. With a GGUF form (Llama-style, llama.cpp installed): model.gguf written
    into the artifact (so the winner carries it), measured in llama.cpp, recorded in the manifest too. Returns the
    gguf_* metrics (if any) and served_*: the GGUF's, else the PyTorch metrics `pytorch`."""
    gguf = measure_gguf(artifact, data.eval_blocks, data.prompt_ids[0].tolist(), decode_tokens, threads)
    source = gguf or pytorch
    served = gguf | {"served_runtime": "llama.cpp" if gguf else "torch"}
    served |= {key: source[SERVED_SOURCES[key][0 if gguf else 1]] for key in SERVED_SOURCES}
    manifest = read_manifest(artifact) | served
    atomic_write_text(artifact / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return served


def _search_setup(cfg: SweepJobConfig, specs: list[CandidateSpec]):
    """(param_space, search_alg, num_samples) for grid or Optuna NSGA-II."""
    from ray import tune

    s = cfg.search
    if s.algorithm == "grid":
        return {"spec": tune.grid_search([asdict(x) for x in specs])}, None, 1
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    choices = search_choices(s)
    space = {key: tune.choice(values or [0]) for key, values in choices.items()}
    sampler = optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(2, min(50, s.num_samples // 3)))
    searcher = OptunaSearch(
        metric=list(s.objectives),
        mode=[OBJECTIVE_MODES[o] for o in s.objectives],
        sampler=sampler,
        points_to_evaluate=seed_points(choices),
    )
    return space, searcher, s.num_samples


WEIGHT_ONLY_QUANTS = ("int4-weight", "int8-weight")
"""Weight-only quantizations, strongest first: what a search tries alone before it samples."""


def seed_points(choices: dict[str, list]) -> list[dict] | None:
    """The points a search tries first, every other field at its first choice: a student (it costs more than a
    pruned copy, so a short search might never draw one) and the strongest weight-only quantization of the model
    itself, unpruned where "none" is a method (the largest cut in bytes that usually keeps quality, so a short search
    always has it to compare against)."""
    first = {key: (values or [0])[0] for key, values in choices.items()}
    points = []
    students = [layers for layers in choices["student_layers"] if layers]
    if students:
        points.append(first | {"student_layers": students[0]})
    quant = next((q for q in WEIGHT_ONLY_QUANTS if q in choices["quant"]), None)
    if quant and first["quant"] != quant:
        plain = {
            "method": "none" if "none" in choices["method"] else first["method"],
            "student_layers": 0 if 0 in choices["student_layers"] else first["student_layers"],
        }
        points.append(first | plain | {"quant": quant})
    return points or None


def _flatten_trial(config: dict) -> dict:
    return config.get("spec", config)


def _row(result) -> dict:
    config = _flatten_trial(result.config or {})
    trial = (result.metrics or {}).get("trial_id") or (result.path or "?").rstrip("/").split("/")[-1][:40]
    try:
        spec = CandidateSpec(**{k: config[k] for k in SPEC_FIELDS if k in config}).normalized()
    except CandidateError:
        spec = CandidateSpec()
    row = {
        "trial": trial,
        "label": spec.label(),
        "method": spec.method,
        "sparsity_setting": spec.sparsity,
        "pattern": spec.pattern,
        "quant": spec.quant,
        "group_size": spec.group_size,
        "recovery_steps": spec.recovery_steps,
        "student_layers": spec.student_layers,
        "student_hidden_size": spec.student_hidden_size,
        "distill_steps": spec.distill_steps,
    }
    if result.error is not None or not result.metrics or "perplexity" not in result.metrics:
        error = str(result.error).strip().splitlines()[-1] if result.error else "no metrics reported"
        return row | {"status": "failed", "error": error[:300]}
    keep = (
        "perplexity",
        "size_mb",
        "weights_bytes",
        "total_bytes",
        "linear_bytes",
        "params",
        "sparsity",
        "decode_tokens_per_s",
        "batched_tokens_per_s",
        "format",
        "build_seconds",
    )
    served = {k: result.metrics[k] for k in (*GGUF_METRICS, *SERVED_METRICS) if k in result.metrics}
    return row | {k: result.metrics[k] for k in keep} | served | {"status": "ok", "artifact": result.checkpoint.path}


def _baseline_row(inputs: SweepInputs, output: Path, cfg: SweepJobConfig) -> dict:
    metrics = make_candidate(
        inputs.base,
        inputs.tokenizer,
        CandidateSpec(),
        output / "baseline",
        inputs.data,
        decode_tokens=cfg.measure.decode_tokens,
    )
    threads = max(1, int(cfg.search.cpus_per_trial))
    metrics |= _measure_served_form(output / "baseline", metrics, inputs.data, cfg.measure.decode_tokens, threads)
    return {
        "trial": "baseline",
        "label": "uncompressed",
        "status": "ok",
        "method": "none",
        "quant": "none",
        "artifact": str(output / "baseline"),
        **{k: v for k, v in metrics.items() if k != "label"},
    }


def _install_winner(winner: dict, output: Path, constraint: str) -> Path:
    """Copy the winning artifact to <output>/winner atomically, with why it won in its manifest."""
    target = output / "winner"
    with atomic_directory(target) as tmp:
        shutil.copytree(winner["artifact"], tmp, dirs_exist_ok=True)
        manifest = read_manifest(tmp) | {
            "selected_by": constraint,
            "trial": winner["trial"],
            "ppl_ratio": winner["ppl_ratio"],
            "bytes_ratio": winner["bytes_ratio"],
        }
        atomic_write_text(Path(tmp) / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return target


def run_sweep(cfg: SweepJobConfig) -> dict:
    """The whole sweep; returns {"rows", "front", "winner", "baseline"}. Raises NoWinnerError after writing the
    reports when no candidate meets the constraint."""
    from minigpt_ray.cluster import connect_ray

    inputs = prepare_sweep(cfg)
    data = inputs.data
    log.info(
        "data: %d evaluation and %d training blocks; cache: blocks %s",
        len(data.eval_blocks),
        len(data.train_blocks),
        inputs.blocks_cache,
    )
    output = Path(cfg.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    baseline = _baseline_row(inputs, output, cfg)
    log.info(
        "baseline: perplexity %.3f, %.3f MB, %.0f decode tokens/s",
        baseline["perplexity"],
        baseline["size_mb"],
        baseline["decode_tokens_per_s"],
    )
    connect_ray(cfg.ray_address)
    results = _tuner(cfg, inputs, output).fit()
    rows = [baseline] + [_row(result) for result in results]
    add_ratios(rows, baseline)
    objectives = list(cfg.search.objectives)
    front = pareto_front(rows, objectives)
    w = cfg.winner
    constraint = constraint_text(baseline["perplexity"], w.max_ppl_ratio, w.max_ppl, w.max_size_mb, w.prefer)
    try:
        winner = choose_winner(rows, baseline["perplexity"], w.max_ppl_ratio, w.max_ppl, w.max_size_mb, w.prefer)
    except NoWinnerError:
        write_reports(output, rows, front, baseline, None, constraint, objectives)
        if remove_directory(output / "winner"):  # serving must never pick up a winner this sweep did not choose
            log.info("no winner: removed the previous %s", output / "winner")
        raise
    _install_winner(winner, output, constraint)
    write_reports(output, rows, front, baseline, winner, constraint, objectives)
    log.info(
        "%d trials in %.0f s; Pareto front: %d candidates; winner: %s (ppl %.3f, %.3f MB)",
        len(rows) - 1,
        time.time() - started,
        len(front),
        winner["label"],
        winner["perplexity"],
        winner["size_mb"],
    )
    return {"rows": rows, "front": front, "winner": winner, "baseline": baseline}


def _tuner(cfg: SweepJobConfig, inputs: SweepInputs, output: Path):
    """Tune's Tuner: one trial per candidate, `cpus_per_trial` each, results and TensorBoard logs under
    <output>/tune."""
    from ray import tune

    s = cfg.search
    settings = TrialSettings(
        model=inputs.source.location,
        recovery_lr=s.recovery_lr,
        decode_tokens=cfg.measure.decode_tokens,
        seed=s.seed,
        threads=max(1, int(s.cpus_per_trial)),
        students=StudentTraining(s.distill_alpha, s.distill_temperature, s.distill_lr),
        fail_when=trial_fault(),
    )
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, data=inputs.data, settings=settings), {"cpu": s.cpus_per_trial}
    )
    space, searcher, num_samples = _search_setup(cfg, inputs.specs)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=num_samples, max_concurrent_trials=s.max_concurrent
        ),
        run_config=tune.RunConfig(
            name=f"{cfg.run_name}_{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(output / "tune"),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )
