"""The tokenizer and packed-corpus cache: keys (any changed input misses, identical inputs hit), corrupt and partial
entries rebuilt, and cached runs training on exactly the blocks and token ids of uncached ones."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
from helpers import tiny_run_config

from minigpt_ray.config import CorpusConfig
from minigpt_ray.config.base import parse_args
from minigpt_ray.config.train import TrainJobConfig
from minigpt_ray.data.cache import (
    MANIFEST,
    DiskCache,
    cache_root,
    packed_key,
    tokenizer_digest,
    tokenizer_key,
)
from minigpt_ray.data.corpora import Document, split_documents
from minigpt_ray.data.packing import pack_splits
from minigpt_ray.modeling.tokenizer import CHAT_TEMPLATE, train_bpe
from minigpt_ray.training.prepare import prepare_run

TEXTS = [f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * (3 + i % 5) for i in range(60)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXTS, 300)


@pytest.fixture
def docs():
    return split_documents([Document("test", t) for t in TEXTS], 0.2)


def corpus(tmp_path, **overrides) -> CorpusConfig:
    return replace(CorpusConfig(sources=["test"], block_size=32, cache_dir=str(tmp_path / "cache")), **overrides)


def test_identical_inputs_give_the_same_key_and_any_change_misses(tokenizer, docs):
    train, val = docs
    key = packed_key(train, val, tokenizer, 32)
    assert packed_key(list(train), list(val), tokenizer, 32) == key
    edited = [replace(train[0], text=train[0].text + "!")] + train[1:]
    moved = (train[1:], val + train[:1])  # the same documents, split otherwise
    keyed = [replace(d, split_key="review") for d in train]
    chat = [replace(d, messages=(("user", "hi"), ("assistant", d.text))) for d in train]
    other_tokenizer = train_bpe(TEXTS, 280)
    changed = {
        "text": packed_key(edited, val, tokenizer, 32),
        "order": packed_key(train[::-1], val, tokenizer, 32),
        "split": packed_key(*moved, tokenizer, 32),
        "split key": packed_key(keyed, val, tokenizer, 32),
        "messages": packed_key(chat, val, tokenizer, 32),
        "tokenizer": packed_key(train, val, other_tokenizer, 32),
        "block size": packed_key(train, val, tokenizer, 64),
    }
    assert key not in changed.values() and len(set(changed.values())) == len(changed)
    base = tokenizer_key(TEXTS, 300, CHAT_TEMPLATE)
    assert tokenizer_key(list(TEXTS), 300, CHAT_TEMPLATE) == base
    assert len({base, tokenizer_key(TEXTS[1:], 300, CHAT_TEMPLATE), tokenizer_key(TEXTS, 301, CHAT_TEMPLATE)}) == 3
    assert tokenizer_key(TEXTS, 300, "{{ messages }}") != base
    assert tokenizer_digest(tokenizer) != tokenizer_digest(other_tokenizer)


def test_a_second_pack_hits_and_equals_an_uncached_one(tmp_path, tokenizer, docs):
    uncached = pack_splits(corpus(tmp_path, no_cache=True), tokenizer, *docs)
    assert not (tmp_path / "cache").exists()  # --no-cache stores nothing
    first = pack_splits(corpus(tmp_path), tokenizer, *docs)
    second = pack_splits(corpus(tmp_path), tokenizer, *docs)
    assert (uncached.cache, first.cache, second.cache) == ("off", "miss", "hit")
    for packed in (first, second):
        assert np.array_equal(packed.train, uncached.train) and np.array_equal(packed.val, uncached.val)
        assert packed.stats == uncached.stats and packed.train.dtype == uncached.train.dtype


@pytest.mark.parametrize("damage", ["flipped byte", "no manifest", "missing file", "garbled manifest"])
def test_a_corrupt_or_partial_entry_is_rebuilt_not_used(tmp_path, tokenizer, docs, damage, caplog):
    good = pack_splits(corpus(tmp_path), tokenizer, *docs)
    (entry,) = (tmp_path / "cache" / "packed").iterdir()
    if damage == "flipped byte":
        data = bytearray((entry / "train.npy").read_bytes())
        data[-1] ^= 0xFF
        (entry / "train.npy").write_bytes(bytes(data))
    elif damage == "no manifest":
        (entry / MANIFEST).unlink()
    elif damage == "missing file":
        (entry / "val.npy").unlink()
    else:
        (entry / MANIFEST).write_text("{not json")
    caplog.set_level(logging.INFO, logger="minigpt_ray")
    rebuilt = pack_splits(corpus(tmp_path), tokenizer, *docs)
    assert rebuilt.cache == "rebuilt" and any("is corrupt" in r.getMessage() for r in caplog.records)
    assert np.array_equal(rebuilt.train, good.train) and np.array_equal(rebuilt.val, good.val)
    cache = DiskCache(tmp_path / "cache")
    key = packed_key(*docs, tokenizer, 32)
    assert cache.load("packed", key, lambda path: "read") == ("read", "hit")  # the rebuilt entry is whole


def test_a_staging_directory_left_by_a_killed_run_is_never_read(tmp_path, tokenizer, docs):
    key = packed_key(*docs, tokenizer, 32)
    staging = tmp_path / "cache" / "packed" / f".{key[:12]}-killed"
    staging.mkdir(parents=True)
    (staging / "train.npy").write_bytes(b"partial")
    packed = pack_splits(corpus(tmp_path), tokenizer, *docs)
    assert packed.train.shape[1] == 32 and (tmp_path / "cache" / "packed" / key / MANIFEST).is_file()


def test_cached_and_uncached_runs_prepare_identical_blocks_and_tokenizers(tmp_path, monkeypatch):
    def prepared(no_cache: bool):
        cfg = tiny_run_config(tmp_path / "run")
        cfg.data.cache_dir, cfg.data.no_cache = str(tmp_path / "cache"), no_cache
        return prepare_run(cfg)

    uncached = prepared(True)
    assert not (tmp_path / "cache").exists()
    first, second = prepared(False), prepared(False)
    assert (uncached.tokenizer_origin, first.tokenizer_origin, second.tokenizer_origin) == ("off", "miss", "hit")
    assert (first.data.cache, second.data.cache) == ("miss", "hit")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["packed", "tokenizer"]
    for run in (first, second):
        assert run.tokenizer.get_vocab() == uncached.tokenizer.get_vocab()
        assert np.array_equal(run.data.train, uncached.data.train)  # the same blocks, in the same shuffled order
        assert np.array_equal(run.data.val, uncached.data.val) and run.data.stats == uncached.data.stats


def test_the_cache_directory_setting_and_a_bare_no_cache_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_RAY_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" and cache_root(str(tmp_path / "own")) == tmp_path / "own"
    monkeypatch.delenv("MINIGPT_RAY_CACHE")
    assert cache_root().parts[-2:] == (".cache", "minigpt_ray")
    assert parse_args(["--output", "o", "--no-cache"], "", TrainJobConfig).data.no_cache is True
    assert parse_args(["--output", "o", "--no-cache", "false"], "", TrainJobConfig).data.no_cache is False
    assert parse_args(["--output", "o"], "", TrainJobConfig).data.no_cache is False
