"""Chat data, no cluster: conversations rendered through the chat template round-trip, only the assistant's tokens
are trained (labels masked, and no loss on system/user tokens), `.jsonl` messages are checked line by line, and the
built-in instruction set holds both of its tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_llama_config
from transformers import AutoModelForCausalLM

from minigpt_ray.config import ConfigError, CorpusConfig
from minigpt_ray.data.chat import chat_segments, chat_token_ids
from minigpt_ray.data.corpora import CONTINUE_REQUEST, Document, source_documents, split_documents
from minigpt_ray.data.packing import IGNORE_INDEX, pack_conversations, pack_splits
from minigpt_ray.modeling.loss import fused_causal_lm_loss
from minigpt_ray.modeling.tokenizer import train_bpe

TURNS = (
    ("system", "简短回答"),
    ("user", "这本书好吗？"),
    ("assistant", "很好。"),
    ("user", "为什么？"),
    ("assistant", "有趣"),
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["这本书很好，很有趣。为什么简短回答？" * 30, "今天天气不错。" * 30], 320)


def test_only_the_assistants_replies_are_trained_and_the_text_round_trips(tokenizer):
    segments = chat_segments(tokenizer, TURNS)
    assert [text for text, trained in segments if trained] == ["很好。<|endoftext|>\n", "有趣<|endoftext|>\n"]
    ids, trained = chat_token_ids(tokenizer, TURNS)
    messages = [{"role": r, "content": c} for r, c in TURNS]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode([i for i, k in zip(ids, trained, strict=True) if k]) == (
        "很好。<|endoftext|>\n有趣<|endoftext|>\n"
    )


def test_packed_labels_mask_everything_but_the_replies(tokenizer):
    docs = [Document("chat", "x", TURNS)] * 12 + [Document("text", "今天天气不错。" * 3)] * 4
    packed = pack_splits(CorpusConfig(sources=["chat"], block_size=16), tokenizer, docs, docs)
    assert packed.train.ndim == 3 and packed.train.shape[1:] == (2, 16)
    ids, labels = packed.train[:, 0], packed.train[:, 1]
    kept = labels != IGNORE_INDEX
    assert np.array_equal(labels[kept], ids[kept]) and 0 < kept.mean() < 0.5
    text_ids = tokenizer("今天天气不错。" * 3, add_special_tokens=False)["input_ids"]
    assert np.isin(text_ids, ids[kept]).all()  # plain text documents are trained whole


def test_a_conversation_that_fits_a_block_never_straddles_two():
    conversations = [[10 + i] * n for i, n in enumerate([5, 4, 6, 3, 7, 2])]
    labels = [[-100] * (len(c) - 1) + [c[0]] for c in conversations]  # the reply: each conversation's last token
    blocks = pack_conversations(conversations, labels, [True] * 6, block_size=8, pad_id=0)
    ids, trained = blocks[:, 0], blocks[:, 1]
    for index in range(len(conversations)):
        rows = {row for row, _ in zip(*np.nonzero(ids == 10 + index), strict=True)}
        assert len(rows) == 1, f"conversation {index} is cut across blocks {rows}"
    assert set(trained[ids == 0].tolist()) == {-100}  # the padding is never trained
    assert sorted(trained[trained != -100].tolist()) == [10, 11, 12, 13, 14, 15]  # every reply kept
    long_one = pack_conversations([[7] * 20, [8] * 3], [[7] * 20, [8] * 3], [False, True], 8, 0)
    assert (long_one[:, 0] == 7).sum() == 20 and long_one.shape == (3, 2, 8)  # longer than a block: split


def test_no_loss_on_system_and_user_tokens(tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(len(tokenizer)))
    ids, trained = chat_token_ids(tokenizer, TURNS)
    input_ids = torch.tensor([ids])
    labels = torch.tensor([[t if k else IGNORE_INDEX for t, k in zip(ids, trained, strict=True)]])
    logits = model(input_ids=input_ids).logits[0, :-1]
    per_token = torch.nn.functional.cross_entropy(logits, input_ids[0, 1:], reduction="none")
    expected = per_token[torch.tensor(trained[1:])].mean()
    assert fused_causal_lm_loss(model, input_ids, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    assert model(input_ids=input_ids, labels=labels).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_jsonl_messages_are_read_and_checked_line_by_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(good, ensure_ascii=False) + "\n" + json.dumps({"text": "一段文字"}) + "\n")
    docs = source_documents(str(path))
    assert docs[0].messages == (("user", "你好"), ("assistant", "你好！")) and docs[1].messages is None
    for bad, detail in (
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0] must be {role: system|user|assistant"),
        ({"messages": [{"role": "user", "content": "只有问题"}]}, "a conversation needs an assistant message"),
    ):
        path.write_text(json.dumps(bad, ensure_ascii=False) + "\n")
        with pytest.raises(ConfigError, match=rf"^data.sources: {path}:1: {detail}"):
            source_documents(str(path))


def test_a_tokenizer_without_a_chat_template_is_refused(tokenizer):
    plain = train_bpe(["hello world " * 20], 300)
    plain.chat_template = None
    with pytest.raises(ConfigError, match=r"^data.sources: chat messages need a tokenizer with a chat template"):
        chat_token_ids(plain, TURNS)


def test_the_built_in_instruction_set_holds_both_tasks():
    docs = source_documents("zh-instruct", max_chars=20_000)
    answers = {d.messages[-1][1] for d in docs}
    assert {"正面", "负面"} <= answers and len(answers) > 2  # sentiment labels and review continuations
    assert all(d.messages[0][0] == "user" and d.messages[-1][0] == "assistant" for d in docs)


def test_both_tasks_made_from_one_review_land_in_the_same_split():
    docs = source_documents("zh-instruct", max_chars=200_000)
    sentiment = sum(d.messages[-1][1] in ("正面", "负面") for d in docs)
    assert sentiment > (len(docs) - sentiment) * 1.5  # every review asked for its sentiment, every other continued
    train, val = split_documents(docs, 0.2)
    held_out_keys = {d.split_key for d in val}
    assert val and all(d.split_key for d in docs)
    assert not any(d.split_key in held_out_keys for d in train)
    continued = [d for d in val if d.messages[0][1].startswith(CONTINUE_REQUEST)]
    assert continued and all(d.split_key in d.messages[0][1] + d.messages[1][1] for d in continued)
