"""Everything a sweep needs before a trial starts, with no Ray and no writes: the model resolved and loaded, its
tokenizer, the calibration and evaluation blocks, and every candidate of the search space checked against the
model's layers. Bad input fails here with a ConfigError naming the field."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minigpt_ray.compress.candidate import CalibrationData, check_fits_model
from minigpt_ray.compress.distill import new_student
from minigpt_ray.config import CandidateError, CandidateSpec, ConfigError, SweepJobConfig
from minigpt_ray.config.sweep import SPACE_FIELDS, search_choices
from minigpt_ray.data.corpora import load_documents, split_documents
from minigpt_ray.data.packing import pack_splits
from minigpt_ray.modeling.source import ModelSource, resolve_model

PROMPT_TOKENS = 8


@dataclass
class SweepInputs:
    source: ModelSource
    tokenizer: object
    base: torch.nn.Module
    """The uncompressed model, in eval mode."""
    data: CalibrationData
    specs: list[CandidateSpec]
    """Every distinct candidate of the search space (the uncompressed baseline excluded)."""
    blocks_cache: str = "off"
    """Where the packed blocks came from (`PackedData.cache`)."""


def _token_blocks(blocks, limit: int = 0) -> torch.Tensor:
    """Token ids as a long tensor (conversations' [n, 2, T] blocks give their ids; the sweep scores every token)."""
    ids = blocks[:, 0] if blocks.ndim == 3 else blocks
    return torch.from_numpy(ids[:limit] if limit else ids).long()


def load_base_model(name: str):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars would bury the sweep's own lines
    return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).eval()


def grid_specs(cfg: SweepJobConfig) -> list[CandidateSpec]:
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


COMPRESSIBLE = ("llama", "gpt2")
"""Architectures the compression code and the GGUF measurement handle (Llama-style covers SmolLM2 and the presets)."""


def prepare_sweep(cfg: SweepJobConfig) -> SweepInputs:
    """Model, tokenizer and data blocks, every spec checked against the model. No Ray, nothing written."""
    specs = grid_specs(cfg)
    if not specs:
        raise ConfigError(
            "search: empty search space: only the uncompressed model (the baseline) is in it; add a "
            "pruning method or a quantization"
        )
    source = resolve_model(cfg.model, field="model", presets=False)
    if source.config.model_type not in COMPRESSIBLE:
        raise ConfigError(
            f"model: the sweep compresses {' and '.join(COMPRESSIBLE)} models (their GGUF form is what it measures), "
            f"not {source.config.model_type!r}"
        )
    source.check_block_size(cfg.data.block_size)
    tokenizer = source.tokenizer()
    base = load_base_model(source.location)
    _check_specs_fit(specs, base)  # before the corpus is read: a search space that cannot apply fails in seconds
    docs = load_documents(cfg.data.sources, cfg.data.txt_split, cfg.data.max_chars_per_source)
    packed = pack_splits(cfg.data, tokenizer, *split_documents(docs, cfg.data.val_fraction))
    eval_blocks = _token_blocks(packed.val, cfg.measure.eval_blocks)
    train_blocks = _token_blocks(packed.train)
    data = CalibrationData(
        eval_blocks=eval_blocks,
        calib_blocks=train_blocks[: cfg.measure.calib_blocks],
        train_blocks=train_blocks,
        prompt_ids=eval_blocks[:1, :PROMPT_TOKENS],
    )
    return SweepInputs(source=source, tokenizer=tokenizer, base=base, data=data, specs=specs, blocks_cache=packed.cache)


def _check_specs_fit(specs: list[CandidateSpec], base) -> None:
    """Every pattern / group size against the layer widths of the model, or of the student it applies to, and
    every student shape against the model, before any trial."""
    students: dict = {}
    for spec in specs:
        try:
            model = base
            if spec.student_layers:
                shape = (spec.student_layers, spec.student_hidden_size)
                if shape not in students:
                    students[shape] = new_student(base, spec, seed=0)[0]
                model = students[shape]
            check_fits_model(spec, model)
        except CandidateError as err:
            field, message = str(err).split(": ", 1)
            raise ConfigError(f"search.{SPACE_FIELDS.get(field, field)}: {message}") from None
