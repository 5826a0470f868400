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
from dataclasses import asdict, fields
from pathlib import Path

import torch

from minigpt_ray.compress.artifact import MANIFEST, read_manifest
from minigpt_ray.compress.candidate import CandidateError, CandidateSpec, check_fits_model, make_candidate
from minigpt_ray.config import ConfigError
from minigpt_ray.corpora import load_documents, split_documents
from minigpt_ray.data import pack_blocks, tokenize_texts
from minigpt_ray.model import check_pretrained
from minigpt_ray.outputs import atomic_directory, atomic_write_text
from minigpt_ray.pareto import (OBJECTIVE_MODES, NoWinnerError, add_ratios, choose_winner, constraint_text,
                                pareto_front, write_reports)
from minigpt_ray.sweep_config import SweepConfig, search_choices
from minigpt_ray.tokenizer import load_tokenizer

SPEC_FIELDS = [f.name for f in fields(CandidateSpec)]
PROMPT_TOKENS = 8


def _blocks(tokenizer, docs, block_size: int, split: str, limit: int = 0) -> torch.Tensor:
    blocks = pack_blocks(tokenize_texts(tokenizer, [d.text for d in docs]), block_size)
    if len(blocks) == 0:
        raise ConfigError(f"data.sources: the {split} split holds no full block of {block_size} tokens; give more "
                          f"text or lower data.block_size")
    blocks = torch.from_numpy(blocks[:limit] if limit else blocks).long()
    return blocks


def load_base_model(name: str):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars would bury the sweep's own lines
    return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).eval()


def grid_specs(cfg: SweepConfig) -> list[CandidateSpec]:
    """Every distinct normalized combination of the search space (settings that do not apply collapse)."""
    specs: list[CandidateSpec] = []
    combos = [{}]
    for key, values in search_choices(cfg.search).items():
        combos = [c | {key: v} for c in combos for v in values]
    for combo in combos:
        if combo["quant"] != "int4-weight":
            combo["group_size"] = 0
        spec = CandidateSpec(**combo).normalized()
        if spec not in specs and spec != CandidateSpec():  # the uncompressed model is the baseline, run once
            specs.append(spec)
    return specs


def prepare_sweep(cfg: SweepConfig) -> dict:
    """Model, tokenizer and data blocks, every spec checked against the model. No Ray, nothing written."""
    specs = grid_specs(cfg)
    if not specs:
        raise ConfigError("search: empty search space: only the uncompressed model (the baseline) is in it; add a "
                          "pruning method or a quantization")
    model_config = check_pretrained(cfg.model)
    positions = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", 0)
    if positions and cfg.data.block_size > positions:
        raise ConfigError(f"data.block_size: {cfg.data.block_size} exceeds the {positions} positions of {cfg.model}")
    tokenizer = load_tokenizer(cfg.model)
    docs = load_documents(cfg.data.sources, cfg.data.txt_split, cfg.data.max_chars_per_source)
    train_docs, val_docs = split_documents(docs, cfg.data.val_fraction)
    eval_blocks = _blocks(tokenizer, val_docs, cfg.data.block_size, "validation", cfg.data.eval_blocks)
    train_blocks = _blocks(tokenizer, train_docs, cfg.data.block_size, "training")
    data = {"eval": eval_blocks, "calib": train_blocks[:cfg.data.calib_blocks], "train": train_blocks,
            "prompt": eval_blocks[:1, :PROMPT_TOKENS]}
    base = load_base_model(cfg.model)
    for spec in specs:  # every pattern / group size against the model's layer widths, before any trial
        try:
            check_fits_model(spec, base)
        except CandidateError as err:
            field, message = str(err).split(": ", 1)
            raise ConfigError(f"search.{ {'pattern': 'patterns', 'group_size': 'group_sizes'}.get(field, field)}: "
                              f"{message}") from None
    return {"tokenizer": tokenizer, "data": data, "base": base, "specs": specs}


def sweep_trial(config: dict, data: dict, settings: dict) -> None:
    """One Tune trial (runs in a Ray worker process)."""
    from ray import tune

    torch.set_num_threads(settings["threads"])
    config = _flatten_trial(config)
    spec = CandidateSpec(**{k: config[k] for k in SPEC_FIELDS}).normalized()
    fail_when = settings.get("fail_when") or {}
    if fail_when and all(getattr(spec, k) == v for k, v in fail_when.items()):
        raise RuntimeError(f"injected failure for {spec.label()}")
    base = load_base_model(settings["model"])
    tokenizer = load_tokenizer(settings["model"])
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "candidate"
        metrics = make_candidate(base, tokenizer, spec, artifact, data, settings["recovery_lr"],
                                 settings["decode_tokens"], settings["seed"])
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(artifact)))


def _search_setup(cfg: SweepConfig, specs: list[CandidateSpec]):
    """(param_space, search_alg, num_samples) for grid or Optuna NSGA-II."""
    from ray import tune

    s = cfg.search
    if s.algorithm == "grid":
        return {"spec": tune.grid_search([asdict(x) for x in specs])}, None, 1
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space = {key: tune.choice(values or [0]) for key, values in search_choices(s).items()}
    sampler = optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(2, min(50, s.num_samples // 3)))
    searcher = OptunaSearch(metric=list(s.objectives), mode=[OBJECTIVE_MODES[o] for o in s.objectives],
                            sampler=sampler)
    return space, searcher, s.num_samples


def _flatten_trial(config: dict) -> dict:
    return config["spec"] if "spec" in config else config


def _row(result) -> dict:
    config = _flatten_trial(result.config or {})
    trial = (result.metrics or {}).get("trial_id") or (result.path or "?").rstrip("/").split("/")[-1][:40]
    try:
        spec = CandidateSpec(**{k: config[k] for k in SPEC_FIELDS if k in config}).normalized()
    except CandidateError:
        spec = CandidateSpec()
    row = {"trial": trial, "label": spec.label(), "method": spec.method, "sparsity_setting": spec.sparsity,
           "pattern": spec.pattern, "quant": spec.quant, "group_size": spec.group_size,
           "recovery_steps": spec.recovery_steps}
    if result.error is not None or not result.metrics or "perplexity" not in result.metrics:
        error = str(result.error).strip().splitlines()[-1] if result.error else "no metrics reported"
        return row | {"status": "failed", "error": error[:300]}
    keep = ("perplexity", "size_mb", "weights_bytes", "total_bytes", "linear_bytes", "params", "sparsity",
            "decode_tokens_per_s", "format", "build_seconds")
    return row | {k: result.metrics[k] for k in keep} | {"status": "ok", "artifact": result.checkpoint.path}


def _baseline_row(prep: dict, output: Path, cfg: SweepConfig) -> dict:
    metrics = make_candidate(prep["base"], prep["tokenizer"], CandidateSpec(), output / "baseline", prep["data"],
                             decode_tokens=cfg.search.decode_tokens)
    return {"trial": "baseline", "label": "uncompressed", "status": "ok", "method": "none", "quant": "none",
            "artifact": str(output / "baseline"), **{k: v for k, v in metrics.items() if k != "label"}}


def _install_winner(winner: dict, output: Path, constraint: str) -> Path:
    """Copy the winning artifact to <output>/winner atomically, with why it won in its manifest."""
    target = output / "winner"
    with atomic_directory(target) as tmp:
        shutil.copytree(winner["artifact"], tmp, dirs_exist_ok=True)
        manifest = read_manifest(tmp) | {"selected_by": constraint, "trial": winner["trial"],
                                         "ppl_ratio": winner["ppl_ratio"], "bytes_ratio": winner["bytes_ratio"]}
        atomic_write_text(Path(tmp) / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return target


def run_sweep(cfg: SweepConfig, fail_when: dict | None = None) -> dict:
    """The whole sweep; returns {"rows", "front", "winner", "baseline"}. Raises NoWinnerError after writing the
    reports when no candidate meets the constraint. `fail_when` (tests) makes matching trials raise."""
    from ray import tune

    from minigpt_ray.ray_cluster import connect_ray

    prep = prepare_sweep(cfg)
    output = Path(cfg.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    baseline = _baseline_row(prep, output, cfg)
    print(f"[minigpt_ray] baseline: perplexity {baseline['perplexity']:.3f}, {baseline['size_mb']:.3f} MB, "
          f"{baseline['decode_tokens_per_s']:.0f} decode tokens/s", flush=True)
    connect_ray(cfg.ray_address)
    s = cfg.search
    settings = {"model": str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model,
                "recovery_lr": s.recovery_lr, "decode_tokens": s.decode_tokens, "seed": s.seed,
                "threads": max(1, int(s.cpus_per_trial)), "fail_when": fail_when}
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, data=prep["data"], settings=settings),
                                    {"cpu": s.cpus_per_trial})
    space, searcher, num_samples = _search_setup(cfg, prep["specs"])
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=num_samples, max_concurrent_trials=s.max_concurrent),
        run_config=tune.RunConfig(name=f"{cfg.run_name}_{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(output / "tune"), failure_config=tune.FailureConfig(max_failures=0),
                                  verbose=1))
    results = tuner.fit()
    rows = [baseline] + [_row(result) for result in results]
    add_ratios(rows, baseline)
    front = pareto_front(rows, list(s.objectives))
    w = cfg.winner
    constraint = constraint_text(baseline["perplexity"], w.max_ppl_ratio, w.max_ppl, w.max_size_mb)
    try:
        winner = choose_winner(rows, baseline["perplexity"], w.max_ppl_ratio, w.max_ppl, w.max_size_mb)
    except NoWinnerError:
        write_reports(output, rows, front, baseline, None, constraint, list(s.objectives))
        raise
    _install_winner(winner, output, constraint)
    write_reports(output, rows, front, baseline, winner, constraint, list(s.objectives))
    print(f"[minigpt_ray] {len(rows) - 1} trials in {time.time() - started:.0f} s; Pareto front: {len(front)} "
          f"candidates; winner: {winner['label']} (ppl {winner['perplexity']:.3f}, {winner['size_mb']:.3f} MB)",
          flush=True)
    return {"rows": rows, "front": front, "winner": winner, "baseline": baseline}
