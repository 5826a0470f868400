"""One compression candidate: its settings (CandidateSpec), how it is built from a base model, and what is measured.

The pipeline is prune (optional) → recovery fine-tune keeping the sparsity mask (optional) → quantize (optional)
→ save → reload → measure. Metrics are taken on the reloaded artifact, so what is reported is what ships.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minigpt_ray.compress.artifact import (
    MANIFEST,
    artifact_bytes,
    linear_weight_bytes,
    load_candidate,
    read_manifest,
    save_candidate,
)
from minigpt_ray.compress.distill import StudentTraining, new_student, train_student
from minigpt_ray.compress.finetune import short_finetune
from minigpt_ray.compress.layers import in_features, target_layers
from minigpt_ray.compress.prune import apply_masks, prune_unstructured, sparsity_of
from minigpt_ray.compress.quantize import quantize_model
from minigpt_ray.compress.structured import prune_structured
from minigpt_ray.config.compress import CandidateError, CandidateSpec, parse_pattern
from minigpt_ray.modeling.evaluate import perplexity
from minigpt_ray.outputs import atomic_write_text


@dataclass(frozen=True)
class CalibrationData:
    """The token blocks every candidate of a sweep is built and measured with (the same for all of them)."""

    eval_blocks: torch.Tensor
    """[n, block] validation blocks perplexity is measured on."""
    calib_blocks: torch.Tensor
    """[n, block] training blocks fed through the model for Wanda and structured-pruning importance."""
    train_blocks: torch.Tensor
    """[n, block] training blocks recovery fine-tuning samples from."""
    prompt_ids: torch.Tensor
    """[1, t] prompt of the timed greedy decode."""


def check_fits_model(spec: CandidateSpec, model) -> None:
    """Shape constraints (N:M group, int4 group) against this model's layers, before any work is done."""
    nm = parse_pattern(spec.pattern)
    for name, layer in target_layers(model).items():
        width = in_features(layer)
        if nm and width % nm[1]:
            raise CandidateError(f"pattern: {spec.pattern} needs in_features divisible by {nm[1]}; {name} has {width}")
        if spec.group_size and width % spec.group_size:
            raise CandidateError(f"group_size: {spec.group_size} does not divide in_features {width} of {name}")


def recover(
    model,
    masks: dict | None,
    train_blocks: torch.Tensor,
    steps: int,
    lr: float = 3e-4,
    batch_size: int = 8,
    seed: int = 0,
) -> list[float]:
    """Short fine-tune after pruning (AdamW, linear decay); pruned weights are re-zeroed after every step."""
    layers = target_layers(model)
    return short_finetune(
        model,
        train_blocks,
        steps,
        lambda batch: model(input_ids=batch, labels=batch).loss,
        lr,
        batch_size,
        seed,
        after_step=(lambda: apply_masks(layers, masks)) if masks else None,
    )


def build_candidate(
    base_model,
    spec: CandidateSpec,
    calib_blocks: torch.Tensor,
    train_blocks: torch.Tensor,
    recovery_lr: float = 3e-4,
    seed: int = 0,
    students: StudentTraining | None = None,
):
    """A compressed copy of `base_model` (left untouched), or of a student distilled from it: (model, artifact
    format, details)."""
    details: dict = {}
    if spec.student_layers:
        model, layers = new_student(base_model, spec, seed)
        check_fits_model(spec, model)
        losses = train_student(model, base_model, train_blocks, spec.distill_steps, students or StudentTraining(), seed)
        details["student"] = {"init_from_layers": layers, "distill_losses": losses[:: max(1, len(losses) // 50)]}
    else:
        model = copy.deepcopy(base_model).eval()
    details["layer_names"] = list(target_layers(model))  # before quantization replaces the linear layers
    masks = None
    if spec.method == "structured":
        details["structured"] = prune_structured(model, spec.sparsity, calib_blocks)
    elif spec.method != "none":
        masks = prune_unstructured(model, spec.method, spec.sparsity, spec.pattern, calib_blocks)
    if spec.recovery_steps:
        details["recovery_losses"] = recover(model, masks, train_blocks, spec.recovery_steps, recovery_lr, seed=seed)
    details["sparsity"] = sparsity_of(model)
    if spec.quant != "none":
        quantize_model(model, spec.quant, spec.group_size)
        return model, spec.quant, details
    return model, ("sparse" if masks else "dense"), details


@torch.no_grad()
def decode_tokens_per_s(
    model, prompt_ids: torch.Tensor, new_tokens: int = 32, repeats: int = 2, rows: int = 1
) -> float:
    """Greedy decode speed with the KV cache, in tokens/s summed over `rows` copies of the prompt decoded as one
    batch (1: batch-1 latency; 8: batched throughput): best of `repeats` timed runs after one warm-up."""
    prompt_ids = prompt_ids.repeat(rows, 1)
    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        attention_mask=torch.ones_like(prompt_ids),
        pad_token_id=0,
    )
    model.generate(prompt_ids, **kwargs)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(prompt_ids, **kwargs)
        best = min(best, time.perf_counter() - start)
    return rows * new_tokens / best


def count_params(model) -> int:
    """Parameters of the architecture (quantized layers count their weights' elements, not bytes; tied weights,
    such as an input embedding shared with the LM head, once)."""
    every_name = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    tied = every_name - {name for name, _ in model.named_parameters()}  # second names of a shared parameter
    total = 0
    for name, tensor in model.state_dict().items():
        if name in tied:
            continue
        if name.endswith(".packed"):
            total += tensor.numel() * 2
        elif not name.endswith((".scale", ".offset")):
            total += tensor.numel()
    return total


BATCHED_ROWS = 8
"""Requests decoded together for the batched-throughput measurement (the serving default max_batch_size)."""


def measure(
    directory: str | Path, eval_blocks: torch.Tensor, prompt_ids: torch.Tensor, layer_names, decode_tokens: int = 32
) -> dict:
    """Reload the artifact and measure it: perplexity (the evaluate.py protocol), bytes, decode speed, params."""
    model, _, _ = load_candidate(directory)
    sizes = artifact_bytes(directory)
    return {
        "perplexity": perplexity(model, eval_blocks),
        "weights_bytes": sizes["weights"],
        "total_bytes": sizes["total"],
        "linear_bytes": linear_weight_bytes(directory, layer_names),
        "size_mb": sizes["weights"] / 1e6,
        "params": count_params(model),
        "decode_tokens_per_s": decode_tokens_per_s(model, prompt_ids, decode_tokens),
        "batched_tokens_per_s": decode_tokens_per_s(model, prompt_ids, decode_tokens, rows=BATCHED_ROWS),
    }


def make_candidate(
    base_model,
    tokenizer,
    spec: CandidateSpec,
    directory: str | Path,
    data: CalibrationData,
    recovery_lr: float = 3e-4,
    decode_tokens: int = 32,
    seed: int = 0,
    students: StudentTraining | None = None,
) -> dict:
    """Build, save and measure one candidate; returns its metrics (also stored in its manifest)."""
    spec = spec.normalized()
    if not spec.student_layers:  # a student's own widths are checked once it is built
        check_fits_model(spec, base_model)
    started = time.perf_counter()
    model, fmt, details = build_candidate(
        base_model, spec, data.calib_blocks, data.train_blocks, recovery_lr, seed, students
    )
    manifest = {
        "candidate": asdict(spec),
        "label": spec.label(),
        "sparsity": details["sparsity"],
        "structured": details.get("structured"),
        "recovery_losses": details.get("recovery_losses"),
        "student": details.get("student"),
    }
    save_candidate(model, tokenizer, directory, fmt, manifest)
    metrics = measure(directory, data.eval_blocks, data.prompt_ids, details["layer_names"], decode_tokens)
    metrics |= {
        "sparsity": details["sparsity"],
        "format": fmt,
        "label": spec.label(),
        "build_seconds": time.perf_counter() - started,
    }
    record = read_manifest(directory) | {"metrics": metrics}
    atomic_write_text(Path(directory) / MANIFEST, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return metrics
