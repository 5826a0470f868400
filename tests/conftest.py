"""Shared fixtures. Core tests need no cluster; orchestration tests share one local Ray per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the whole session: 2 CPUs for two training workers, no dashboard (port 8265 stays
    free for a user's own cluster and for the `ray start` test, which uses its own ports)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    from minigpt_ray.corpora import source_documents

    return "\n\n".join(d.text for d in source_documents("shakespeare", max_chars=60_000))


@pytest.fixture(scope="session")
def zh_text() -> str:
    from minigpt_ray.corpora import source_documents

    return "\n".join(d.text for d in source_documents("zh-news", max_chars=40_000))


def tiny_run_config(output: Path, **train_overrides):
    """A small but real run: gpt-nano-sized model on a Shakespeare slice, a few seconds of steps per worker."""
    from minigpt_ray.config import RunConfig

    cfg = RunConfig(output=str(output), sample_prompt="")
    cfg.model.name = "gpt-nano"
    cfg.model.vocab_size = 512
    cfg.data.sources = ["shakespeare"]
    cfg.data.max_chars_per_source = 150_000
    cfg.data.block_size = 64
    cfg.data.val_fraction = 0.05
    cfg.data.tokenizer_train_chars = 150_000
    t = cfg.train
    t.num_workers, t.micro_batch_size, t.max_steps, t.warmup_steps, t.lr = 2, 8, 30, 3, 3e-3
    t.eval_every, t.checkpoint_every, t.eval_batches, t.log_every = 15, 15, 4, 5
    for key, value in train_overrides.items():
        setattr(t, key, value)
    return cfg.validate()


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
