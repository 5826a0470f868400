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

    # Serve's autoscaling metrics are pushed every 10 s by default; 1 s keeps the autoscaling test short.
    for name in ("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
                 "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"):
        os.environ.setdefault(name, "1")
    from minigpt_ray.ray_cluster import embedded_serve_env

    embedded_serve_env()  # the same Serve ingress (HAProxy) as the jobs' embedded Ray
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


def train_tiny_model(texts: list[str], directory: Path, vocab_size: int = 512, steps: int = 150) -> dict:
    """A tiny Llama-style GPT trained briefly (plain PyTorch, ~10 s) on `texts`, saved as an HF dir with its
    tokenizer. Widths divisible by 32 so int4 groups and N:M patterns apply. Returns {"dir", "eval", "calib",
    "train", "prompt"}: the data dict the compression code takes."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from minigpt_ray.corpora import Document, split_documents
    from minigpt_ray.data import pack_blocks, tokenize_texts
    from minigpt_ray.tokenizer import save_tokenizer, train_bpe

    docs = [Document(text=t, source="test") for t in texts if t.strip()]
    train_docs, val_docs = split_documents(docs, 0.1)
    tokenizer = train_bpe([d.text for d in train_docs], vocab_size)
    train = torch.from_numpy(pack_blocks(tokenize_texts(tokenizer, [d.text for d in train_docs]), 64)).long()
    val = torch.from_numpy(pack_blocks(tokenize_texts(tokenizer, [d.text for d in val_docs]), 64)).long()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = train[torch.randint(len(train), (16,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory)
    return {"dir": str(directory), "eval": val[:24], "calib": train[:8], "train": train, "prompt": val[:1, :8]}


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, shakespeare_text):
    """train_tiny_model on a Shakespeare slice (English)."""
    return train_tiny_model(shakespeare_text.split("\n\n"), tmp_path_factory.mktemp("tiny_trained") / "model")


@pytest.fixture(scope="session")
def tiny_zh_model(tmp_path_factory, zh_text):
    """train_tiny_model on People's Daily with a 300-token vocabulary: most Chinese characters span 2-3 byte
    tokens, so streaming must hold incomplete characters back."""
    return train_tiny_model(zh_text.split("\n"), tmp_path_factory.mktemp("tiny_zh") / "model", vocab_size=300)
