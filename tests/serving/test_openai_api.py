"""Request validation of the OpenAI-compatible completions API, without a server."""

from __future__ import annotations

import json

import pytest

from minigpt_ray.modeling.tokenizer import train_bpe
from minigpt_ray.serving.openai_api import (
    ApiError,
    LimitsConfig,
    completion_body,
    decode_body,
    parse_completion,
    stream_event,
)

TOKENIZER = train_bpe(["hello world, 今天天气很好。" * 40], 300)
LIMITS = LimitsConfig(max_prompt_tokens=20, max_new_tokens=64, max_body_bytes=2048)


def parse(body: dict, limits: LimitsConfig = LIMITS):
    return parse_completion(body, TOKENIZER, limits, "minigpt")


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({}, 400, "prompt"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": 5}, 400, "prompt"),
        ({"prompt": ["a", "b"]}, 400, "prompt"),
        ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 65}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": "8"}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": True}, 400, "max_tokens"),
        ({"prompt": "hi", "temperature": -0.1}, 400, "temperature"),
        ({"prompt": "hi", "top_p": 0}, 400, "top_p"),
        ({"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
        ({"prompt": "hi", "top_k": -1}, 400, "top_k"),
        ({"prompt": "hi", "stop": [1]}, 400, "stop"),
        ({"prompt": "hi", "stop": ["a"] * 5}, 400, "stop"),
        ({"prompt": "hi", "seed": "x"}, 400, "seed"),
        ({"prompt": "hi", "stream": "yes"}, 400, "stream"),
        ({"prompt": "hi", "ignore_eos": 1}, 400, "ignore_eos"),
        ({"prompt": "hi", "presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"prompt": "hi", "frequency_penalty": -1}, 400, "frequency_penalty"),
        ({"prompt": "hi", "logit_bias": {"5": 10}}, 400, "logit_bias"),
        ({"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ({"prompt": "hi", "stream": True, "stream_options": {"include_usage": 1}}, 400, "stream_options"),
        ({"prompt": "hi", "n": 2}, 400, "n"),
        ({"prompt": "hi", "echo": True}, 400, "echo"),
        ({"prompt": "hi", "model": "gpt-4"}, 404, "model"),
        ({"prompt": "hello world " * 20}, 400, "prompt"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_parameter(body, status, param):
    with pytest.raises(ApiError) as info:
        parse(body)
    assert info.value.status == status and info.value.param == param
    error = info.value.body()["error"]
    assert error["message"].startswith(param + ":") and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "raw, status",
    [(b"{not json", 400), ('{"prompt": "caf\xe9"}'.encode("latin-1"), 400), (b"[1, 2]", 400), (b"x" * 3000, 413)],
)
def test_bad_bodies(raw, status):
    with pytest.raises(ApiError) as info:
        decode_body(raw, LIMITS)
    assert info.value.status == status


def test_a_good_request_and_its_defaults():
    parsed = parse({"prompt": ["今天天气"], "stop": "。", "seed": 3, "model": "minigpt"})
    request, stream, prompt_tokens = parsed.request, parsed.stream, parsed.prompt_tokens
    assert request.max_tokens == LIMITS.default_max_tokens and request.temperature == 1.0 and request.top_p == 1.0
    assert request.stop == ["。"] and request.seed == 3 and not stream and not request.ignore_eos
    assert parse({"prompt": "hi", "ignore_eos": True}).request.ignore_eos
    assert parse({"prompt": "hi", "presence_penalty": 0, "logit_bias": None}).request.temperature == 1.0
    assert parse({"prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}).include_usage
    assert TOKENIZER.decode(request.prompt_ids) == "今天天气" and prompt_tokens == len(request.prompt_ids)


def test_long_prompts_can_be_truncated_from_the_left():
    limits = LimitsConfig(max_prompt_tokens=5, prompt_overflow="truncate-left")
    request = parse({"prompt": "hello world " * 20 + "今天天气"}, limits).request
    assert len(request.prompt_ids) == 5 and TOKENIZER.decode(request.prompt_ids).endswith("天气")


def test_prompt_plus_max_tokens_must_fit_the_context_window():
    prompt = {"prompt": "hello world " * 3, "max_tokens": 10}
    n_prompt = len(parse(prompt).request.prompt_ids)
    with pytest.raises(ApiError) as info:
        parse_completion(prompt, TOKENIZER, LIMITS, "minigpt", context_window=n_prompt + 9)
    assert info.value.status == 400 and info.value.param == "max_tokens" and "context window" in info.value.message
    assert parse_completion(prompt, TOKENIZER, LIMITS, "minigpt", context_window=n_prompt + 10).request.max_tokens == 10
    cut = LimitsConfig(max_prompt_tokens=20, prompt_overflow="truncate-left")
    request = parse_completion(prompt, TOKENIZER, cut, "minigpt", context_window=n_prompt + 7).request
    assert request.prompt_ids == parse(prompt).request.prompt_ids[3:]  # the end of the prompt, cut to make room
    with pytest.raises(ApiError):
        parse_completion(prompt, TOKENIZER, cut, "minigpt", context_window=10)  # no room left for any prompt


def test_response_shapes_match_openai():
    body = completion_body("cmpl-1", "minigpt", "text", "length", 3, 4)
    assert body["object"] == "text_completion" and body["usage"]["total_tokens"] == 7
    event = stream_event("cmpl-1", "minigpt", "今", None)
    assert event.startswith("data: ") and json.loads(event[6:])["choices"][0]["text"] == "今"
