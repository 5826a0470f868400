"""Chat requests, no cluster: messages validated field by field, rendered through the chat template, and answered
as the completion of that text."""

from __future__ import annotations

import pytest

from minigpt_ray.config.serve import LimitsConfig
from minigpt_ray.modeling.tokenizer import train_bpe
from minigpt_ray.serving.chat import CHAT, chat_messages, parse_chat
from minigpt_ray.serving.openai_api import ApiError

LIMITS = LimitsConfig(max_prompt_tokens=256, max_new_tokens=64)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["今天天气很好。这本书不错。" * 20, "hello world " * 20], 320)


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": 3}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "hi"}], "prompt": "x"}, "prompt"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ],
)
def test_bad_chat_input_names_the_field(tokenizer, body, param):
    with pytest.raises(ApiError) as err:
        parse_chat(body, tokenizer, LIMITS, "minigpt")
    assert err.value.status == 400 and err.value.param == param and err.value.message.startswith(param + ":")


def test_messages_are_rendered_through_the_template(tokenizer):
    messages = [
        {"role": "developer", "content": "简短回答"},
        {"role": "user", "content": [{"type": "text", "text": "今天"}, {"type": "text", "text": "天气"}]},
    ]
    assert chat_messages({"messages": messages}) == [
        {"role": "system", "content": "简短回答"},
        {"role": "user", "content": "今天天气"},
    ]
    parsed = parse_chat({"messages": messages, "max_completion_tokens": 5, "temperature": 0}, tokenizer, LIMITS, "m")
    rendered = (
        "<|im_start|>system\n简短回答<|endoftext|>\n<|im_start|>user\n今天天气<|endoftext|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.decode(parsed.request.prompt_ids) == rendered  # byte-level BPE: the text round-trips
    assert parsed.request.max_tokens == 5 and parsed.request.temperature == 0 and not parsed.stream


def test_a_model_without_a_chat_template_is_refused(tokenizer):
    plain = train_bpe(["hello world " * 20], 300)
    plain.chat_template = None
    with pytest.raises(ApiError, match="^messages: this model has no chat template"):
        parse_chat({"messages": [{"role": "user", "content": "hi"}]}, plain, LIMITS, "m")


def test_a_too_long_conversation_names_the_messages(tokenizer):
    long = [{"role": "user", "content": "中华人民共和国的首都是北京" * 3}]
    with pytest.raises(ApiError, match=r"^messages: \d+ tokens exceeds max_prompt_tokens 16") as err:
        parse_chat({"messages": long}, tokenizer, LimitsConfig(max_prompt_tokens=16), "m")
    assert err.value.code == "context_length_exceeded"


def test_chat_reply_shapes():
    body = CHAT.body("chatcmpl-1", "m", "好", "stop", 3, 1)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "好"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert '"delta": {"role": "assistant", "content": ""}' in CHAT.opening_event("chatcmpl-1", "m")
    assert '"object": "chat.completion.chunk"' in CHAT.text_event("chatcmpl-1", "m", "好", None)
