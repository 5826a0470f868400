import numpy as np
import pytest

from minigpt_ray.config import ConfigError, CorpusConfig
from minigpt_ray.data.corpora import Document
from minigpt_ray.data.packing import pack_blocks, prepare_data, tokenize_texts
from minigpt_ray.modeling.tokenizer import load_tokenizer, save_tokenizer, train_bpe


@pytest.fixture(scope="module")
def tokenizer(shakespeare_text, zh_text):
    return train_bpe([shakespeare_text, zh_text], vocab_size=2000)


SAMPLES = [
    "今天天气很好，我们去公园散步吧。",
    "To be, or not to be: that is the question.",
    "  leading spaces\tand tabs\n\nnew lines ",
    "混合 mixed 文本 123 ４５６ 😀 émigré",
    "",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_exact(tokenizer, text, tmp_path):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    save_tokenizer(tokenizer, tmp_path)
    reloaded = load_tokenizer(str(tmp_path))  # a transformers tokenizer, as saved next to the model
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
    assert reloaded.decode(ids) == text


def test_chinese_and_english_are_compact(tokenizer, shakespeare_text, zh_text):
    en, zh = shakespeare_text[:20_000], zh_text[:20_000]
    en_chars_per_token = len(en) / len(tokenizer(en)["input_ids"])
    zh_chars_per_token = len(zh) / len(tokenizer(zh)["input_ids"])
    zh_bytes_per_token = len(zh.encode()) / len(tokenizer(zh)["input_ids"])
    assert en_chars_per_token > 2.2  # raw bytes would be 1.0 (2k vocab shared by two languages)
    assert zh_chars_per_token > 1.0  # merges go past one character per token
    assert zh_bytes_per_token > 3.0  # a raw UTF-8 byte tokenizer would be 1.0


def test_pack_blocks_eos_separated():
    blocks = pack_blocks([[1, 2, 0], [3, 0], [4, 5, 6, 0]], block_size=4)
    assert blocks.tolist() == [[1, 2, 0, 3], [0, 4, 5, 6]]  # ragged tail [0] dropped
    assert blocks.dtype == np.int32
    assert pack_blocks([], 4).shape == (0, 4)


def test_tokenize_appends_eos(tokenizer):
    ids = tokenize_texts(tokenizer, ["ab", "今天"])
    assert all(seq[-1] == tokenizer.eos_token_id for seq in ids)
    assert tokenizer.decode(ids[1][:-1]) == "今天"


def test_prepare_data_shapes_and_split(tokenizer):
    docs = [Document("t", f"document number {i} " * 20) for i in range(200)]
    packed = prepare_data(CorpusConfig(sources=["t"], block_size=32, val_fraction=0.1), tokenizer, docs)
    assert packed.train.shape[1] == 32 and packed.val.shape[1] == 32
    assert packed.stats["documents"]["train"] + packed.stats["documents"]["val"] == 200


def test_corpus_shorter_than_one_block(tokenizer):
    with pytest.raises(ConfigError, match=r"^data.sources: .*fewer than one block \(data.block_size=512\)"):
        prepare_data(CorpusConfig(sources=["tiny"], block_size=512), tokenizer, [Document("tiny", "too short")] * 3)


def test_documents_start_with_bos_only_where_the_tokenizer_starts_texts_with_it():
    from tokenizers.processors import TemplateProcessing

    from minigpt_ray.data.packing import document_prefix, tokenize_texts
    from minigpt_ray.modeling.tokenizer import train_bpe

    plain = train_bpe(["hello world, hello there"] * 20, 300)
    assert document_prefix(plain) == [] and tokenize_texts(plain, ["hello"])[0][-1] == plain.eos_token_id
    gemma_like = train_bpe(["hello world, hello there"] * 20, 300)
    gemma_like.add_special_tokens({"bos_token": "<bos>"})
    bos = gemma_like.bos_token_id
    gemma_like.backend_tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    assert bos != gemma_like.eos_token_id and document_prefix(gemma_like) == [bos]
    ids = tokenize_texts(gemma_like, ["hello", "world"])
    assert [d[0] for d in ids] == [bos, bos] and all(d[-1] == gemma_like.eos_token_id for d in ids)
