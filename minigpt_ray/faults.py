"""Fault injection for the fault-tolerance tests, switched on by one environment variable of the driver and off in
every normal run, so no production function takes a test-only argument.

  MINIGPT_RAY_FAULT=crash-at-step:6:/tmp/marker   a training worker dies hard once at step 6 (the marker file
                                                  records that it happened, so the restarted group runs on)
  MINIGPT_RAY_FAULT=fail-trial:method=structured,quant=none   sweep trials whose settings match raise
  MINIGPT_RAY_FAULT=nan-at-step:5                  training diverges: after step 5 a weight (every rank) is NaN
  MINIGPT_RAY_FAULT=hang-prompt:HANG               a served completion whose prompt is HANG never answers (the
                                                  replica hangs past the app's own timeout; the ingress cuts it)
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FAULT_ENV = "MINIGPT_RAY_FAULT"


def _fault_spec(kind: str) -> str | None:
    value = os.environ.get(FAULT_ENV, "")
    prefix = f"{kind}:"
    return value[len(prefix) :] if value.startswith(prefix) else None


@dataclass(frozen=True)
class WorkerFault:
    step: int
    marker: str
    rank: int
    delay_s: float = 5.0

    @classmethod
    def from_env(cls, world_size: int) -> WorkerFault | None:
        spec = _fault_spec("crash-at-step")
        if spec is None:
            return None
        step, marker = spec.split(":", 1)
        return cls(step=int(step), marker=str(Path(marker).resolve()), rank=min(1, world_size - 1))

    def maybe_crash(self, step: int, rank: int) -> None:
        """Rank `self.rank` dies hard once at `self.step`, marked by a file."""
        marker = Path(self.marker)
        if step != self.step or rank != self.rank or marker.exists():
            return
        marker.write_text(str(step))
        # Die a while after the last checkpoint, as a real failure would: Ray Train registers a reported checkpoint
        # at its next poll of the workers (about every second), and one reported just before a crash may be lost.
        time.sleep(self.delay_s)
        sys.stderr.write(f"injected crash at step {step} on rank {rank}\n")
        sys.stderr.flush()
        os._exit(1)


def nan_step() -> int | None:
    """The training step after which the workers' weights are made NaN (a divergence), or None."""
    spec = _fault_spec("nan-at-step")
    return int(spec) if spec is not None else None


def hang_prompt() -> str | None:
    """The completion prompt that must hang its replica (the hang-prompt fault), or None."""
    return _fault_spec("hang-prompt")


def trial_fault() -> dict | None:
    """Settings ({CandidateSpec field: value}) of sweep trials that must fail, or None."""
    spec = _fault_spec("fail-trial")
    if spec is None:
        return None
    pairs = dict(item.split("=", 1) for item in spec.split(",") if item)
    return {key: _typed(value) for key, value in pairs.items()}


def _typed(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value
