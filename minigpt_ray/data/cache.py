"""On-disk cache of what does not change between runs: trained tokenizers and tokenized, packed corpora.

An entry is a directory `<root>/<kind>/<key>/` whose key hashes everything the entry depends on (the documents'
contents, the tokenizer, the settings), so a change to any input misses and identical inputs hit. Its files are
listed with their SHA-256 in `manifest.json`, written last, and the directory is renamed into place in one step: an
entry is either complete or absent. A partial or corrupt one (missing manifest, a file that does not match its
hash, one that fails to load) is logged, removed and rebuilt, never used. Plain Python/NumPy, no Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import tokenizers
from transformers import PreTrainedTokenizerBase

from minigpt_ray.logs import get_logger
from minigpt_ray.outputs import CACHE_ENV, cache_root  # noqa: F401 (re-exported: the cache's root is set here)

FORMAT_VERSION = 1
"""Part of every key: raised when what an entry holds, or how it is built, changes."""
MANIFEST = "manifest.json"


def digest(parts: Iterable) -> str:
    """A key from an ordered sequence of strings, bytes and JSON-able values (each part length-prefixed, so no two
    different sequences join to the same bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode("utf-8") if isinstance(part, str) else None
        if data is None:
            data = json.dumps(part, sort_keys=True, ensure_ascii=False).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def documents_digest(documents) -> str:
    """The contents of documents, in order: source, text, conversation turns and split key of each."""
    return digest(json.dumps([d.source, d.text, d.messages, d.split_key], ensure_ascii=False) for d in documents)


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """What decides a tokenizer's ids: its full serialized model (vocabulary, merges, pre-tokenizer, special
    tokens) when it is a fast tokenizer, else its vocabulary; plus the EOS token and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return digest([model, tokenizer.eos_token_id, tokenizer.chat_template or ""])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DiskCache:
    """Entries under one root. `disabled` (`--no-cache`): every lookup misses and nothing is stored."""

    def __init__(self, root: Path, disabled: bool = False):
        self.root, self.disabled = root, disabled

    @classmethod
    def from_settings(cls, cache_dir: str, no_cache: bool) -> DiskCache:
        """The cache `data.cache_dir` / `data.no_cache` name."""
        return cls(cache_root(cache_dir), disabled=no_cache)

    def fetch(self, kind: str, key_of: Callable[[], str], read, build, write) -> tuple[object, str]:
        """(the entry of `key_of()` read by `read(directory)`, "hit"), else (`build()`, the reason it was built:
        "miss", "rebuilt" or "off"), stored through `write(value, directory)`. The key is computed only when the
        cache is on."""
        key = "" if self.disabled else key_of()
        value, status = self.load(kind, key, read)
        if value is None:
            value = build()
            self.store(kind, key, lambda directory: write(value, directory))
        return value, status

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def load(self, kind: str, key: str, read: Callable[[Path], object]) -> tuple[object | None, str]:
        """(the entry read by `read(directory)`, "hit"), or (None, why not: "off", "miss" or "rebuilt" when the
        entry was corrupt and has been removed, which is also logged as a warning)."""
        if self.disabled:
            return None, "off"
        path = self.entry(kind, key)
        if not path.is_dir():
            return None, "miss"
        try:
            self._verify(path)
            return read(path), "hit"
        except Exception as err:  # noqa: BLE001 - whatever broke the entry, it is rebuilt
            get_logger().warning("cache entry %s is corrupt (%s): removed and rebuilt", path, err)
            shutil.rmtree(path, ignore_errors=True)
            return None, "rebuilt"

    def store(self, kind: str, key: str, write: Callable[[Path], None]) -> None:
        """Write an entry through `write(directory)` into a private directory, then rename it into place. A
        failure to store is logged and ignored: the run has its result either way."""
        if self.disabled:
            return
        final, staging = self.entry(kind, key), None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
            write(staging)
            files = {p.name: _sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
            (staging / MANIFEST).write_text(json.dumps({"version": FORMAT_VERSION, "files": files}, indent=1))
            os.rename(staging, final)  # atomic: readers see the whole entry or none
        except OSError as err:
            if not final.is_dir():  # else another run stored the same entry first, and it stays
                get_logger().warning("cache: could not store %s/%s (%s)", kind, key[:12], err)
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _verify(path: Path) -> None:
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("version") != FORMAT_VERSION or not manifest.get("files"):
            raise ValueError("unknown manifest")
        for name, expected in manifest["files"].items():
            if _sha256(path / name) != expected:
                raise ValueError(f"{name} does not match its recorded hash")


def tokenizer_key(texts: list[str], vocab_size: int, template: str) -> str:
    """The key of a BPE tokenizer trained on `texts` (in order) to `vocab_size` tokens with this chat template."""
    return digest([FORMAT_VERSION, "bpe", tokenizers.__version__, vocab_size, template, *texts])


def packed_key(train_docs, val_docs, tokenizer, block_size: int) -> str:
    return digest(
        [FORMAT_VERSION, "packed", documents_digest(train_docs), documents_digest(val_docs)]
        + [tokenizer_digest(tokenizer), block_size]
    )


def read_packed(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    train, val = np.load(path / "train.npy"), np.load(path / "val.npy")
    return train, val, json.loads((path / "stats.json").read_text())


def write_packed(packed, path: Path) -> None:
    """A `PackedData`'s blocks and stats into `path` (what `read_packed` reads back)."""
    np.save(path / "train.npy", packed.train)
    np.save(path / "val.npy", packed.val)
    (path / "stats.json").write_text(json.dumps(packed.stats))
