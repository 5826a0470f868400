"""Settings of one compression candidate (`CandidateSpec`): what the sweep searches over and what a candidate's
manifest records. Plain data and validation; the compression itself is in `minigpt_ray.compress`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

QUANT_METHODS = ("none", "int8-weight", "int8-dynamic", "int4-weight")
INT4_GROUP_SIZES = (32, 64, 128, 256)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """'unstructured' → None; 'N:M' → (N, M): keep at most N nonzeros in every M consecutive input weights."""
    if pattern == "unstructured":
        return None
    n, m = (int(part) for part in pattern.split(":"))
    return n, m


PRUNE_METHODS = ("none", "magnitude", "magnitude-global", "wanda", "structured")


class CandidateError(ValueError):
    """A setting no candidate can have; the message names the field."""


@dataclass(frozen=True)
class CandidateSpec:
    method: str = "none"
    """Pruning: none, magnitude (per layer), magnitude-global, wanda, structured (FFN neurons + heads)."""
    sparsity: float = 0.0
    """Fraction of target weights pruned (structured: of FFN neurons and heads), in [0, 1)."""
    pattern: str = "unstructured"
    """unstructured or N:M (e.g. 2:4, 4:8: at most N nonzeros in every M inputs) for magnitude/wanda."""
    quant: str = "none"
    """Quantization: none, int8-weight, int8-dynamic, int4-weight."""
    group_size: int = 0
    """int4 group size (32, 64, 128, 256)."""
    recovery_steps: int = 0
    """Fine-tune steps after pruning, re-applying the mask after every step (0 = none)."""
    student_layers: int = 0
    """> 0: first distil the model into a student of this many layers (its own architecture otherwise), which is
    then pruned and quantized as above; 0 = compress the model itself."""
    student_hidden_size: int = 0
    """The student's width (0 = the model's: the student then starts from the model's evenly spaced layers)."""
    distill_steps: int = 0
    """Distillation steps of the student."""

    def normalized(self) -> CandidateSpec:
        """Validate, and zero the settings that do not apply, so equal candidates compare equal."""
        _check(self.method in PRUNE_METHODS, "method", f"must be one of {', '.join(PRUNE_METHODS)}", self.method)
        _check(self.quant in QUANT_METHODS, "quant", f"must be one of {', '.join(QUANT_METHODS)}", self.quant)
        _check(0.0 <= self.sparsity < 1.0, "sparsity", "must be in [0, 1)", self.sparsity)
        _check(self.recovery_steps >= 0, "recovery_steps", "must be >= 0", self.recovery_steps)
        _check(self.student_layers >= 0, "student_layers", "must be >= 0", self.student_layers)
        _check(self.student_hidden_size >= 0, "student_hidden_size", "must be >= 0", self.student_hidden_size)
        _check(self.distill_steps >= 0, "distill_steps", "must be >= 0", self.distill_steps)
        _check(
            not self.student_layers or self.distill_steps >= 1,
            "distill_steps",
            "a student needs at least 1 distillation step",
            self.distill_steps,
        )
        try:
            nm = parse_pattern(self.pattern)
        except ValueError:
            raise CandidateError(f"pattern: must be unstructured or N:M like 2:4, got {self.pattern!r}") from None
        _check(nm is None or 0 < nm[0] < nm[1], "pattern", "N:M needs 0 < N < M", self.pattern)
        if self.quant == "int4-weight":
            _check(
                self.group_size in INT4_GROUP_SIZES,
                "group_size",
                f"int4 needs one of {', '.join(map(str, INT4_GROUP_SIZES))}",
                self.group_size,
            )
        spec = asdict(self)
        if self.method not in ("magnitude", "wanda") or nm is None:
            spec["pattern"] = "unstructured"
        if self.method == "none":
            spec.update(sparsity=0.0, recovery_steps=0)
        elif spec["pattern"] != "unstructured":
            spec["sparsity"] = 1 - nm[0] / nm[1]
        if self.quant != "int4-weight":
            spec["group_size"] = 0
        if not self.student_layers:
            spec.update(student_hidden_size=0, distill_steps=0)
        return CandidateSpec(**spec)

    def label(self) -> str:
        parts = []
        if self.student_layers:
            width = f"x{self.student_hidden_size}" if self.student_hidden_size else ""
            parts.append(f"distill {self.student_layers}L{width} {self.distill_steps} steps")
        if self.method != "none":
            shape = self.pattern if self.pattern != "unstructured" else f"{self.sparsity:.0%}"
            parts.append(f"{self.method} {shape}" + (f" +{self.recovery_steps} rec" if self.recovery_steps else ""))
        if self.quant != "none":
            parts.append(self.quant + (f" g{self.group_size}" if self.group_size else ""))
        return " + ".join(parts) or "uncompressed"


def _check(ok: bool, field: str, message: str, value) -> None:
    if not ok:
        raise CandidateError(f"{field}: {message}, got {value!r}")
