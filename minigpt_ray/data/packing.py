"""Documents → token blocks: tokenize with a `datasets` batched map (Arrow-backed, Rust tokenizer), append EOS to
every document, concatenate and cut into fixed-length blocks. Plain Python/NumPy: no Ray here; the trainer
puts the arrays in Ray's object store for its workers."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np

from minigpt_ray.config import ConfigError, CorpusConfig
from minigpt_ray.data.cache import DiskCache, packed_key, read_packed, write_packed
from minigpt_ray.data.chat import chat_token_ids
from minigpt_ray.data.corpora import Document, load_documents, split_documents

IGNORE_INDEX = -100
"""Label of a token that is not trained: PyTorch's cross-entropy ignore index, as in `modeling.loss`."""


@dataclass
class PackedData:
    train: np.ndarray
    """int32 [n_train_blocks, block_size]; with chat documents [n, 2, block_size]: token ids, then labels (the ids,
    or IGNORE_INDEX where a token is not trained: system and user turns)."""
    val: np.ndarray
    """int32 [n_val_blocks, block_size], or [n, 2, block_size] like `train`."""
    stats: dict
    cache: str = "off"
    """Where the blocks came from: "hit" (the cache), else built here: "miss", "rebuilt" (a corrupt entry was
    replaced) or "off" (no cache)."""


def document_prefix(tokenizer) -> list[int]:
    """[BOS] for tokenizers that start every text with it (Gemma: the model was pretrained so and degrades without
    it), [] otherwise (the presets and SmolLM2 separate documents with EOS alone)."""
    bos = tokenizer.bos_token_id
    if bos is None or bos == tokenizer.eos_token_id:
        return []
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]  # what the tokenizer itself puts first
    return [bos] if probe and probe[0] == bos else []


def tokenize_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids per text, EOS appended (and BOS prepended where the tokenizer wants it), through a batched
    `datasets` map (Arrow columns, no Python loop per doc)."""
    if not texts:
        return []
    eos, first = tokenizer.eos_token_id, document_prefix(tokenizer)
    table = datasets.Dataset.from_dict({"text": texts})
    datasets.disable_progress_bars()
    tokenized = table.map(
        lambda batch: {
            "ids": [first + ids + [eos] for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]
        },
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


def pack_conversations(
    ids: list[list[int]], labels: list[list[int]], whole: list[bool], block_size: int, pad_id: int
) -> np.ndarray:
    """[n, 2, block_size] blocks of ids and labels. A document marked `whole` (a conversation that fits in a block)
    never straddles two blocks: when it does not fit in what is left of the current block, that rest is padded (EOS
    ids, untrained labels) and it starts the next one. Split across blocks, a reply would be trained without the
    question that decides it (a sentiment label after a block boundary has no review before it). Other documents
    (plain text, conversations longer than a block) fill blocks as `pack_blocks` does; the last block is padded."""
    stream_ids, stream_labels = [], []
    for tokens, trained, keep_whole in zip(ids, labels, whole, strict=True):
        room = block_size - len(stream_ids) % block_size
        if keep_whole and len(tokens) > room:
            stream_ids += [pad_id] * room
            stream_labels += [IGNORE_INDEX] * room
        stream_ids += tokens
        stream_labels += trained
    tail = -len(stream_ids) % block_size  # the last block is padded, not dropped: it holds whole replies too
    stream_ids += [pad_id] * tail
    stream_labels += [IGNORE_INDEX] * tail
    ids_blocks = np.asarray(stream_ids, dtype=np.int32).reshape(-1, block_size)
    return np.stack([ids_blocks, np.asarray(stream_labels, dtype=np.int32).reshape(-1, block_size)], axis=1)


def _pack_split(tokenizer, docs: list[Document], block_size: int, masked: bool) -> tuple[np.ndarray, int]:
    """Blocks of one split; `masked` (the corpus has conversations): blocks of [ids, labels]."""
    if not masked:
        token_lists = tokenize_texts(tokenizer, [d.text for d in docs])
        return pack_blocks(token_lists, block_size), sum(map(len, token_lists))
    texts = iter(tokenize_texts(tokenizer, [d.text for d in docs if d.messages is None]))
    ids, labels, whole = [], [], []
    for doc in docs:
        if doc.messages is None:
            tokens = next(texts)
            ids.append(tokens)
            labels.append(tokens)
            whole.append(False)
            continue
        tokens, trained = chat_token_ids(tokenizer, doc.messages)
        ids.append(tokens)
        labels.append([t if k else IGNORE_INDEX for t, k in zip(tokens, trained, strict=True)])
        whole.append(len(tokens) <= block_size)
    blocks = pack_conversations(ids, labels, whole, block_size, tokenizer.eos_token_id)
    return blocks, sum(map(len, ids))


def prepare_data(cfg: CorpusConfig, tokenizer, documents: list[Document] | None = None) -> PackedData:
    """Read (unless `documents` are given), split by document, tokenize and pack."""
    if documents is None:
        documents = load_documents(cfg.sources, cfg.txt_split, cfg.max_chars_per_source)
    return pack_splits(cfg, tokenizer, *split_documents(documents, cfg.val_fraction))


def pack_splits(cfg: CorpusConfig, tokenizer, train_docs: list[Document], val_docs: list[Document]) -> PackedData:
    """Tokenize and pack both splits, or reuse the blocks a run with the same documents, tokenizer and block size
    packed before (unless cfg.no_cache). Raises ConfigError when a split has less than one block."""
    data, status = DiskCache.from_settings(cfg.cache_dir, cfg.no_cache).fetch(
        "packed",
        lambda: packed_key(train_docs, val_docs, tokenizer, cfg.block_size),
        lambda path: PackedData(*read_packed(path)),
        lambda: _pack_both(cfg, tokenizer, train_docs, val_docs),
        write_packed,
    )
    data.cache = status
    return data


def _pack_both(cfg: CorpusConfig, tokenizer, train_docs: list[Document], val_docs: list[Document]) -> PackedData:
    masked = any(d.messages is not None for d in train_docs + val_docs)
    train, train_tokens = _pack_split(tokenizer, train_docs, cfg.block_size, masked)
    val, val_tokens = _pack_split(tokenizer, val_docs, cfg.block_size, masked)
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
