"""Settings of the compression sweep (`minigpt sweep`, `jobs/sweep.py`): YAML + CLI, one docstring per field.

The same machinery as the training job (flags are `--<field-name>`, `--data` is data.sources), and the same
corpus settings (`CorpusConfig`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from minigpt_ray.config.base import ConfigError, check_output_dir, require
from minigpt_ray.config.compress import CandidateError, CandidateSpec
from minigpt_ray.config.train import CorpusConfig, validate_corpus

OBJECTIVE_MODES = {
    "perplexity": "min",
    "size_mb": "min",
    "decode_tokens_per_s": "max",
    "served_perplexity": "min",
    "served_mb": "min",
    "served_tokens_per_s": "max",
    "served_batched_tokens_per_s": "max",
    "batched_tokens_per_s": "max",
}
"""What each sweep objective wants: the smallest or the largest value. served_* are the candidate as it will be
served: its GGUF in llama.cpp (Llama-style models, llama.cpp installed), else its PyTorch form."""
WINNER_PREFERENCES = ("size", "speed")


def _sweep_corpus() -> CorpusConfig:
    """The sweep evaluates on the fine-tuning text, in shorter blocks than training by default."""
    return CorpusConfig(sources=["zh-reviews"], max_chars_per_source=400_000, val_fraction=0.05, block_size=128)


@dataclass
class MeasureConfig:
    """How every candidate (and the uncompressed baseline) is calibrated and measured."""

    eval_blocks: int = 64
    """Validation blocks every candidate's perplexity is measured on (the first N; fixed for the whole sweep)."""
    calib_blocks: int = 16
    """Training blocks fed through the model for Wanda and structured-pruning importance."""
    decode_tokens: int = 32
    """Tokens generated per timed batch-1 greedy decode."""


@dataclass
class SearchConfig:
    algorithm: str = "optuna"
    """optuna (NSGA-II multi-objective search through Tune's OptunaSearch) or grid (every combination once)."""
    num_samples: int = 12
    """Trials for optuna (grid runs each distinct combination once and ignores this)."""
    methods: list[str] = field(default_factory=lambda: ["none", "magnitude", "wanda", "structured"])
    """Pruning methods to search: none, magnitude, magnitude-global, wanda, structured."""
    sparsities: list[float] = field(default_factory=lambda: [0.3, 0.5])
    """Sparsity values to search (fraction of weights, or of neurons/heads for structured), each in [0, 1)."""
    patterns: list[str] = field(default_factory=lambda: ["unstructured", "2:4"])
    """Sparsity patterns for magnitude/wanda: unstructured and/or N:M such as 2:4, 4:8."""
    quants: list[str] = field(default_factory=lambda: ["none", "int8-weight", "int8-dynamic", "int4-weight"])
    """Quantization methods to search: none, int8-weight, int8-dynamic, int4-weight."""
    group_sizes: list[int] = field(default_factory=lambda: [32, 128])
    """int4 group sizes to search (32, 64, 128, 256)."""
    recovery_steps: list[int] = field(default_factory=lambda: [0])
    """Recovery fine-tune steps after pruning to search (0 = none)."""
    recovery_lr: float = 3e-4
    """Learning rate of the recovery fine-tune."""
    student_layers: list[int] = field(default_factory=lambda: [0])
    """Distilled students to search: 0 = compress the model itself; N = first distil it into a student of N layers
    (trained in the trial on the sweep's text), which is then pruned and quantized like the model."""
    student_hidden_sizes: list[int] = field(default_factory=lambda: [0])
    """Student widths to search (0 = the model's, which lets the student start from its layers)."""
    distill_steps: list[int] = field(default_factory=lambda: [200])
    """Distillation steps of a student to search (each >= 1)."""
    distill_alpha: float = 0.5
    """Weight of the teacher's soft targets in a student's loss (the rest: the labels)."""
    distill_temperature: float = 2.0
    """Softmax temperature of the soft targets."""
    distill_lr: float = 1e-3
    """Learning rate of a student's distillation."""
    objectives: list[str] = field(default_factory=lambda: ["served_perplexity", "served_mb", "served_tokens_per_s"])
    """What the search minimizes/maximizes, as served (served_perplexity, served_mb, served_tokens_per_s: the GGUF
    in llama.cpp when the candidate has one) or in PyTorch (perplexity, size_mb, decode_tokens_per_s)."""
    max_concurrent: int = 2
    """Trials running at once."""
    cpus_per_trial: float = 1.0
    """CPUs reserved per trial (also its torch threads)."""
    seed: int = 0
    """Seed of the search (NSGA-II sampler) and of recovery batches."""


@dataclass
class WinnerConfig:
    max_ppl_ratio: float = 1.05
    """Winner: the smallest candidate (prefer: size) or the fastest (prefer: speed) whose served perplexity is at
    most this times the uncompressed model's."""
    max_ppl: float = 0.0
    """Also require served perplexity <= this (0 = no limit)."""
    max_size_mb: float = 0.0
    """Also require the served size (GGUF file, or PyTorch weights) <= this many MB (0 = no limit)."""
    prefer: str = "size"
    """Among the candidates within the limits: size (the smallest as served) or speed (the fastest batch-1 decode
    as served)."""


@dataclass
class SweepJobConfig:
    """Settings of one compression sweep: the model, its evaluation text, the search space and the winner rule."""

    model: str = "runs/finetune/model"
    """The fine-tuned model to compress: an HF model directory (or hub id) with its tokenizer."""
    output: str = "runs/sweep"
    """Output directory: pareto.csv/json/png, summary.md, trials.csv, baseline/, winner/, tune/ (Tune's results)."""
    run_name: str = "sweep"
    """Name of the Tune experiment under <output>/tune."""
    ray_address: str = ""
    """Ray cluster to join (default: $RAY_ADDRESS as set by `ray job submit`, else an embedded local Ray)."""
    data: CorpusConfig = field(default_factory=_sweep_corpus)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    winner: WinnerConfig = field(default_factory=WinnerConfig)

    ALIASES: ClassVar[dict[str, str]] = {"sources": "data"}

    def validate(self) -> SweepJobConfig:
        validate_sweep(self)
        return self


def search_choices(search: SearchConfig) -> dict[str, list]:
    """The search space as {CandidateSpec field: values}."""
    return {
        "method": search.methods,
        "sparsity": search.sparsities,
        "pattern": search.patterns,
        "quant": search.quants,
        "group_size": search.group_sizes,
        "recovery_steps": search.recovery_steps,
        "student_layers": search.student_layers,
        "student_hidden_size": search.student_hidden_sizes,
        "distill_steps": search.distill_steps,
    }


def validate_sweep(cfg: SweepJobConfig) -> None:
    s, m, w = cfg.search, cfg.measure, cfg.winner
    require(bool(cfg.model.strip()), "model", "must name a model directory", cfg.model)
    require(bool(cfg.output.strip()) and "://" not in cfg.output, "output", "must be a filesystem path", cfg.output)
    check_output_dir(cfg.output, joins_cluster=bool(cfg.ray_address or os.environ.get("RAY_ADDRESS")))
    require(
        bool(cfg.run_name) and not set("/\\") & set(cfg.run_name) and cfg.run_name not in (".", ".."),
        "run_name",
        "must be a plain name (no path separators)",
        cfg.run_name,
    )
    require(s.algorithm in ("optuna", "grid"), "search.algorithm", "must be optuna or grid", s.algorithm)
    require(s.num_samples >= 1, "search.num_samples", "must be >= 1", s.num_samples)
    require(s.recovery_lr > 0, "search.recovery_lr", "must be > 0", s.recovery_lr)
    require(0 <= s.distill_alpha <= 1, "search.distill_alpha", "must be in [0, 1]", s.distill_alpha)
    require(s.distill_temperature > 0, "search.distill_temperature", "must be > 0", s.distill_temperature)
    require(s.distill_lr > 0, "search.distill_lr", "must be > 0", s.distill_lr)
    if any(s.student_layers):
        require(min(s.distill_steps or [0]) >= 1, "search.distill_steps", "must each be >= 1", s.distill_steps)
    require(s.max_concurrent >= 1, "search.max_concurrent", "must be >= 1", s.max_concurrent)
    require(s.cpus_per_trial > 0, "search.cpus_per_trial", "must be > 0", s.cpus_per_trial)
    require(
        bool(s.objectives)
        and all(o in OBJECTIVE_MODES for o in s.objectives)
        and len(set(s.objectives)) == len(s.objectives),
        "search.objectives",
        f"must be distinct names from {', '.join(OBJECTIVE_MODES)}",
        s.objectives,
    )
    validate_corpus(cfg.data)
    require(m.eval_blocks >= 1, "measure.eval_blocks", "must be >= 1", m.eval_blocks)
    require(m.calib_blocks >= 1, "measure.calib_blocks", "must be >= 1", m.calib_blocks)
    require(m.decode_tokens >= 1, "measure.decode_tokens", "must be >= 1", m.decode_tokens)
    require(w.max_ppl_ratio >= 1, "winner.max_ppl_ratio", "must be >= 1", w.max_ppl_ratio)
    require(w.max_ppl >= 0, "winner.max_ppl", "must be >= 0", w.max_ppl)
    require(w.max_size_mb >= 0, "winner.max_size_mb", "must be >= 0", w.max_size_mb)
    require(w.prefer in WINNER_PREFERENCES, "winner.prefer", "must be size or speed", w.prefer)
    _validate_space(s)


SPACE_FIELDS = {
    "method": "methods",
    "sparsity": "sparsities",
    "pattern": "patterns",
    "quant": "quants",
    "group_size": "group_sizes",
    "recovery_steps": "recovery_steps",
    "student_layers": "student_layers",
    "student_hidden_size": "student_hidden_sizes",
    "distill_steps": "distill_steps",
}


def _validate_space(search: SearchConfig) -> None:
    """Every value of every search dimension must make a valid candidate on its own."""
    for key, values in search_choices(search).items():
        name = f"search.{SPACE_FIELDS[key]}"
        if key == "group_size" and "int4-weight" not in search.quants:
            continue
        require(len(values) > 0, name, "empty search space (give at least one value)", values)
        for value in values:
            probe = {"group_size": 32, "distill_steps": 1, key: value}
            probe |= {"quant": "int4-weight"} if key == "group_size" else {}
            try:
                CandidateSpec(**probe).normalized()
            except CandidateError as err:
                raise ConfigError(f"{name}: {str(err).split(': ', 1)[1]}") from None
