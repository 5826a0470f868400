"""Compression library: pruning, quantization, recovery, candidate artifacts. Plain PyTorch, no Ray inside."""

from minigpt_ray.compress.artifact import artifact_bytes, load_candidate, save_candidate
from minigpt_ray.compress.candidate import CalibrationData, make_candidate
from minigpt_ray.compress.prune import prune_unstructured, sparsity_of
from minigpt_ray.compress.quantize import quantize_model
from minigpt_ray.compress.structured import prune_structured
from minigpt_ray.config.compress import CandidateError, CandidateSpec

__all__ = [
    "CalibrationData",
    "CandidateError",
    "CandidateSpec",
    "artifact_bytes",
    "load_candidate",
    "make_candidate",
    "prune_structured",
    "prune_unstructured",
    "quantize_model",
    "save_candidate",
    "sparsity_of",
]
