"""Atomic outputs: a reader sees the old file/directory or the complete new one, never a half-written one."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "MINIGPT_RAY_CACHE"
"""Environment variable naming the cache directory (tokenizers, packed corpora, converted bases) when no setting
names one."""


def cache_root(cache_dir: str = "") -> Path:
    """`cache_dir`, else $MINIGPT_RAY_CACHE, else ~/.cache/minigpt_ray."""
    chosen = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "minigpt_ray"
    return Path(chosen).expanduser()


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temp dir beside `final`; on success it replaces `final` (the old one is removed only after the
    new one is in place); on error it is deleted and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = _retired_name(final)
    if final.exists():
        os.replace(final, retired)
    os.replace(staging, final)
    shutil.rmtree(retired, ignore_errors=True)


def remove_directory(final: str | Path) -> bool:
    """Remove `final` atomically (renamed out of the way first, so no reader sees half of it); True if it existed."""
    final = Path(final)
    if not final.exists():
        return False
    retired = _retired_name(final)
    os.replace(final, retired)
    shutil.rmtree(retired, ignore_errors=True)
    return True


def _retired_name(final: Path) -> Path:
    return final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
