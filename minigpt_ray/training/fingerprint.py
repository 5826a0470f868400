"""What a run's checkpoints belong to. Resuming a run with another model, tokenizer, data or parallel layout would
load shards and optimizer states into something they were not made for, or silently mix two runs; settings that only
extend or reschedule the same run (max_steps, the learning-rate schedule, evaluation and checkpoint cadence) may
change. Plain code, no Ray: the driver checks it before any worker starts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from minigpt_ray.config import ConfigError
from minigpt_ray.outputs import atomic_write_text

FINGERPRINT_FILE = "fingerprint.json"
_VOLATILE = {"transformers_version", "dtype", "torch_dtype", "use_cache", "architectures"}


def run_fingerprint(prepared) -> dict:
    """The identity of a run (a `PreparedRun`): model and architecture, tokenizer, data, block size and layout."""
    cfg, t = prepared.cfg, prepared.cfg.train
    vocab = json.dumps(sorted(prepared.tokenizer.get_vocab().items()), ensure_ascii=False)
    config = prepared.model_config.to_dict()
    d, teacher = cfg.distill, {}
    if prepared.teacher:
        teacher = {"distill": [prepared.teacher.location, d.alpha, d.temperature, d.init_from_teacher]}
    return (
        teacher
        | {
            "model": prepared.source.name,
            "architecture": {k: v for k, v in sorted(config.items()) if not k.startswith("_") and k not in _VOLATILE},
            "tokenizer": hashlib.sha256(vocab.encode()).hexdigest()[:16],
            "data": {"sources": list(cfg.data.sources), "stats": prepared.data.stats},
            "block_size": cfg.data.block_size,
            "zero_stage": t.zero_stage,
            "num_workers": t.num_workers,
            "precision": t.precision,
        }
        | ({"lora": [cfg.lora.r, cfg.lora.lora_alpha, list(cfg.lora.targets)]} if cfg.lora.r else {})
    )


def check_or_record(checkpoint_dir: Path, fingerprint: dict, output: str) -> None:
    """Refuse to resume checkpoints of a different run (ConfigError naming what changed); record the fingerprint of
    a new run. Checkpoints from before fingerprints existed are adopted as they are."""
    path = checkpoint_dir / FINGERPRINT_FILE
    fingerprint = json.loads(json.dumps(fingerprint, default=str))  # compared as it is stored
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key in fingerprint if recorded.get(key) != fingerprint[key]]
        if changed:
            raise ConfigError(
                f"output: {output} holds checkpoints of a different run ({', '.join(changed)} changed); use a new "
                "--output or --run-name (max_steps, the lr schedule and eval/checkpoint settings may change on resume)"
            )
        return
    atomic_write_text(path, json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n")
