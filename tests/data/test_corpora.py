import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minigpt_ray.config import ConfigError
from minigpt_ray.data.corpora import load_documents, source_documents, split_documents, strip_pos_tags


def test_shakespeare_is_split_into_scenes():
    docs = source_documents("shakespeare", max_chars=200_000)
    assert len(docs) > 10
    assert sum(len(d.text) for d in docs) >= 200_000
    assert any(d.text.startswith(("ACT", "SCENE", "Scene")) for d in docs)


def test_zh_news_pos_tags_stripped():
    docs = source_documents("zh-news", max_chars=50_000)
    text = "".join(d.text for d in docs)
    assert "迈向充满希望的新世纪" in text
    assert "/n" not in text and "/v" not in text and "  " not in text


def test_strip_pos_tags_keeps_latin_spacing_and_compounds():
    assert strip_pos_tags("迈向/v  充满/v  希望/n") == "迈向充满希望"
    assert strip_pos_tags("[中央/n  台/n]nt  Windows/nx  98/m") == "中央台Windows 98"


def test_zh_reviews_one_document_per_line():
    docs = source_documents("zh-reviews", max_chars=20_000)
    assert all("\n" not in d.text for d in docs)
    assert len(docs) > 20


def test_user_files_all_formats_and_mixing(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "json doc 一"}) + "\n\n" + json.dumps({"text": "json doc 二"})
    )
    pq.write_table(pa.table({"text": ["parquet doc", " ", None]}), tmp_path / "c.parquet")
    docs = load_documents([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), str(tmp_path / "c.parquet")])
    assert [d.text for d in docs] == [
        "first paragraph\nstill first",
        "second paragraph",
        "json doc 一",
        "json doc 二",
        "parquet doc",
    ]
    assert len(load_documents([str(tmp_path)])) == 5  # a directory of them
    assert len(load_documents([str(tmp_path / "a.txt")], txt_split="line")) == 3
    assert len(load_documents([str(tmp_path / "a.txt")], txt_split="file")) == 1
    mixed = load_documents([str(tmp_path / "b.jsonl"), "zh-reviews"], max_chars=100)
    assert {d.source for d in mixed} == {str(tmp_path / "b.jsonl"), "zh-reviews"}


def test_saved_datasets_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["saved one", "saved two"]}).save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in load_documents([str(tmp_path / "ds")])] == ["saved one", "saved two"]


def test_split_is_deterministic_and_by_document():
    docs = source_documents("zh-reviews", max_chars=300_000)
    train, val = split_documents(docs, 0.1)
    train2, val2 = split_documents(list(reversed(docs)), 0.1)
    assert {d.text for d in val} == {d.text for d in val2}  # order-independent
    assert not {d.text for d in train} & {d.text for d in val}  # no document in both
    assert 0.05 < len(val) / len(docs) < 0.15


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.txt", "neither a built-in corpus"),
        (lambda p: (p / "empty.txt").write_text("  \n\n") and p / "empty.txt", "is empty"),
        (lambda p: (p / "latin1.txt").write_bytes("café".encode("latin-1")) and p / "latin1.txt", "is not UTF-8"),
        (
            lambda p: (p / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n') and p / "bad.jsonl",
            "bad.jsonl:2 is not valid JSON",
        ),
        (
            lambda p: (p / "nofield.jsonl").write_text('{"body": "x"}\n') and p / "nofield.jsonl",
            "no string field 'text'",
        ),
        (lambda p: (p / "x.csv").write_text("a,b") and p / "x.csv", "unsupported type"),
    ],
)
def test_bad_sources_give_one_line_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_documents([str(path)])
    assert str(err.value).startswith("data.sources:")
    assert message in str(err.value) and "\n" not in str(err.value)
