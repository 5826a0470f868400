"""OpenAI-compatible /v1/completions: request validation and response shapes. Plain Python, no Ray, no HTTP server.

Every bad request raises ApiError with an HTTP status and the OpenAI error body
({"error": {"message", "type", "param", "code"}}), so the server maps it to a 4xx JSON reply and stays up.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from minigpt_ray.config.serve import LimitsConfig
from minigpt_ray.data.packing import document_prefix
from minigpt_ray.serving.generation import GenerationRequest

MAX_STOP_SEQUENCES = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{key}: expected a number, got {json.dumps(value)}", key)
    if value < low or (low_open and value == low) or value > high:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError(400, f"{key}: must be in {bounds}, got {value}", key)
    return float(value)


def _integer(body: dict, key: str, default, low: int, high: int | None = None):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key}: expected an integer, got {json.dumps(value)}", key)
    if value < low or (high is not None and value > high):
        raise ApiError(400, f"{key}: must be in [{low}, {high if high is not None else 'inf'}], got {value}", key)
    return value


def decode_body(raw: bytes, limits: LimitsConfig) -> dict:
    if len(raw) > limits.max_body_bytes:
        raise ApiError(
            413, f"body: {len(raw)} bytes exceeds the limit of {limits.max_body_bytes}", None, "body_too_large"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"body: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, f"body: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body: expected a JSON object")
    return body


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if prompt is None:
        raise ApiError(400, "prompt: required", "prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt: expected a string (one prompt per request)", "prompt")
    if not prompt:
        raise ApiError(400, "prompt: must not be empty", "prompt")
    return prompt


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"stop: expected a string or a list of up to {MAX_STOP_SEQUENCES} strings", "stop")
    return stop


UNSUPPORTED = (
    ("n", 1),
    ("best_of", 1),
    ("echo", False),
    ("logprobs", None),
    ("suffix", None),
    ("presence_penalty", 0),
    ("frequency_penalty", 0),
    ("logit_bias", None),
)
"""OpenAI parameters this server does not implement, with the one value it accepts (the default): any other value
is refused with a 400 naming the parameter rather than silently ignored."""


def _unsupported(body: dict) -> None:
    for key, default in UNSUPPORTED:
        if body.get(key, default) not in (default, None):
            raise ApiError(400, f"{key}: only {json.dumps(default)} is supported by this server", key)
    for key in ("stream", "ignore_eos"):
        if not isinstance(body.get(key, False), bool):
            raise ApiError(400, f"{key}: expected true or false, got {json.dumps(body.get(key))}", key)


def _include_usage(body: dict) -> bool:
    """stream_options.include_usage: a last streamed chunk carrying the usage (OpenAI's stream_options)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not body.get("stream", False):
        raise ApiError(400, "stream_options: only allowed when stream is true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ApiError(400, 'stream_options: expected {"include_usage": true|false}', "stream_options")
    if not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options: include_usage must be true or false", "stream_options")
    return options.get("include_usage", False)


@dataclass
class ParsedCompletion:
    """A validated completion request: what to generate and how to answer."""

    request: GenerationRequest
    stream: bool
    prompt_tokens: int
    """Prompt length after any truncation (usage.prompt_tokens)."""
    include_usage: bool = False
    """Streamed: end with a chunk holding the usage (stream_options.include_usage)."""


def parse_completion(
    body: dict, tokenizer, limits: LimitsConfig, served_model: str, context_window: int | None = None
) -> ParsedCompletion:
    """The validated request from a decoded JSON body. `context_window`: the model's positions; prompt +
    max_tokens must fit in it (with truncate-left the prompt is cut to make room)."""
    model = body.get("model")
    if model is not None and model != served_model:
        raise ApiError(
            404,
            f"model: unknown model {json.dumps(model)}; this endpoint serves {json.dumps(served_model)}",
            "model",
            "model_not_found",
        )
    _unsupported(body)
    prompt = _prompt(body)
    request = GenerationRequest(
        prompt_ids=[],
        max_tokens=_integer(body, "max_tokens", limits.default_max_tokens, 1, limits.max_new_tokens),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=_integer(body, "top_k", 0, 0),
        stop=_stop(body),
        seed=_integer(body, "seed", None, 0, 2**63 - 1),
        ignore_eos=body.get("ignore_eos", False),
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    first = document_prefix(tokenizer)  # [BOS] for models that always start with it (Gemma), as in training
    if first and ids[:1] != first:
        ids = first + ids
    if len(ids) > limits.max_prompt_tokens:
        if limits.prompt_overflow != "truncate-left":
            raise ApiError(
                400,
                f"prompt: {len(ids)} tokens exceeds max_prompt_tokens {limits.max_prompt_tokens}",
                "prompt",
                "context_length_exceeded",
            )
        ids = ids[-limits.max_prompt_tokens :]  # keep the end of the prompt: it is what the completion continues
    if context_window is not None and len(ids) + request.max_tokens > context_window:
        room = context_window - request.max_tokens
        if limits.prompt_overflow != "truncate-left" or room < 1:
            raise ApiError(
                400,
                f"max_tokens: prompt ({len(ids)} tokens) + max_tokens ({request.max_tokens}) exceeds "
                f"the model's context window of {context_window} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        ids = ids[-room:]
    request.prompt_ids = ids
    return ParsedCompletion(request, body.get("stream", False), len(ids), _include_usage(body))


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def completion_body(
    cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict:
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def stream_event(cid: str, model: str, text: str, finish_reason: str | None) -> str:
    chunk = {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def usage_event(cid: str, model: str, prompt_tokens: int, completion_tokens: int) -> str:
    """The last chunk of a stream with stream_options.include_usage: no choices, the usage (OpenAI's shape)."""
    body = completion_body(cid, model, "", "", prompt_tokens, completion_tokens)
    return f"data: {json.dumps(body | {'choices': []})}\n\n"


STREAM_DONE = "data: [DONE]\n\n"
