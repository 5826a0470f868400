"""Documents → token blocks: tokenize with a `datasets` batched map (Arrow-backed, Rust tokenizer), append EOS to
every document, concatenate and cut into fixed-length blocks. Plain Python/NumPy: no Ray here; the trainer wraps
the arrays in a Ray Dataset."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np

from minigpt_ray.config import ConfigError, CorpusConfig
from minigpt_ray.data.corpora import Document, load_documents, split_documents


@dataclass
class PackedData:
    train: np.ndarray
    """int32 [n_train_blocks, block_size]"""
    val: np.ndarray
    """int32 [n_val_blocks, block_size]"""
    stats: dict


def tokenize_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids per text, EOS appended, through a batched `datasets` map (Arrow columns, no Python loop per doc)."""
    if not texts:
        return []
    eos = tokenizer.eos_token_id
    table = datasets.Dataset.from_dict({"text": texts})
    datasets.disable_progress_bars()
    tokenized = table.map(
        lambda batch: {"ids": [ids + [eos] for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]},
        batched=True,
        batch_size=2000,
        remove_columns=["text"],
        keep_in_memory=True,
    )
    return tokenized["ids"]


def shuffled_blocks(blocks: np.ndarray, seed: int) -> np.ndarray:
    """The blocks in a seeded random order. Packing keeps document order (one play, one newspaper day after
    another), and each worker streams its shard with only a local shuffle buffer, so without this a short run
    would train on a few neighbouring documents at a time instead of the whole corpus."""
    return blocks[np.random.default_rng(seed).permutation(len(blocks))]


def pack_blocks(token_lists: list[list[int]], block_size: int) -> np.ndarray:
    """Concatenate EOS-terminated documents and cut into [n, block_size] (the ragged tail is dropped)."""
    if not token_lists:
        return np.zeros((0, block_size), dtype=np.int32)
    stream = np.fromiter((t for ids in token_lists for t in ids), dtype=np.int32)
    n_blocks = len(stream) // block_size
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size)


def _pack_split(tokenizer, docs: list[Document], block_size: int) -> tuple[np.ndarray, int]:
    token_lists = tokenize_texts(tokenizer, [d.text for d in docs])
    return pack_blocks(token_lists, block_size), sum(map(len, token_lists))


def prepare_data(cfg: CorpusConfig, tokenizer, documents: list[Document] | None = None) -> PackedData:
    """Read (unless `documents` are given), split by document, tokenize and pack."""
    if documents is None:
        documents = load_documents(cfg.sources, cfg.txt_split, cfg.max_chars_per_source)
    return pack_splits(cfg, tokenizer, *split_documents(documents, cfg.val_fraction))


def pack_splits(cfg: CorpusConfig, tokenizer, train_docs: list[Document], val_docs: list[Document]) -> PackedData:
    """Tokenize and pack both splits. Raises ConfigError when a split has less than one block."""
    train, train_tokens = _pack_split(tokenizer, train_docs, cfg.block_size)
    val, val_tokens = _pack_split(tokenizer, val_docs, cfg.block_size)
    sources = ", ".join(cfg.sources)
    if len(train) == 0:
        raise ConfigError(
            f"data.sources: {sources} gives {train_tokens} training tokens, fewer than one block "
            f"(data.block_size={cfg.block_size})"
        )
    if len(val) == 0:
        raise ConfigError(
            f"data.val_fraction: {cfg.val_fraction} of {sources} gives {len(val_docs)} validation "
            f"documents, {val_tokens} tokens, fewer than one block (data.block_size={cfg.block_size}); "
            "raise val_fraction or add text"
        )
    chars = sum(len(d.text) for d in train_docs + val_docs)
    stats = {
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "characters": chars,
        "tokens": {"train": train_tokens, "val": val_tokens},
        "blocks": {"train": int(len(train)), "val": int(len(val))},
        "chars_per_token": round(chars / max(1, train_tokens + val_tokens), 3),
    }
    return PackedData(train=train, val=val, stats=stats)
