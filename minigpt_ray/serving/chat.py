"""OpenAI's chat completions (`/v1/chat/completions`): messages rendered through the model's chat template, then
generated exactly as a completion of that text (same limits, batching, sampling and errors). Plain Python."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from minigpt_ray.config.serve import LimitsConfig
from minigpt_ray.serving.openai_api import (
    ApiError,
    ParsedCompletion,
    completion_body,
    completion_id,
    parse_completion,
    stream_event,
    usage_event,
)

ROLES = ("system", "developer", "user", "assistant")
"""Roles a message may have (OpenAI's `developer` is its newer name for `system`, and is rendered as one)."""


def _content(message: dict, index: int) -> str:
    """A message's text: a string, or OpenAI's list of content parts of type text (joined)."""
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{index}].content: expected a string or text parts", f"messages[{index}].content")
    return content


def chat_messages(body: dict) -> list[dict]:
    """The validated messages of a chat request, as the chat template takes them."""
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "messages: required", "messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: expected a non-empty list of messages", "messages")
    rendered = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{index}]: expected an object with role and content", f"messages[{index}]")
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(
                400,
                f"messages[{index}].role: expected one of {', '.join(ROLES)}, got {json.dumps(role)}",
                f"messages[{index}].role",
            )
        rendered.append({"role": "system" if role == "developer" else role, "content": _content(message, index)})
    return rendered


def parse_chat(
    body: dict, tokenizer, limits: LimitsConfig, served_model: str, context_window: int | None = None
) -> ParsedCompletion:
    """A chat request as the completion of its rendered messages. `max_completion_tokens` is OpenAI's newer name for
    `max_tokens`; a model without a chat template is refused."""
    if "prompt" in body:
        raise ApiError(400, "prompt: not a chat parameter (send messages, or use /v1/completions)", "prompt")
    messages = chat_messages(body)
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "messages: this model has no chat template; use /v1/completions with a prompt", "messages")
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    fields = {k: v for k, v in body.items() if k not in ("messages", "max_completion_tokens")}
    if "max_completion_tokens" in body:
        fields["max_tokens"] = body["max_completion_tokens"]
    try:
        return parse_completion(fields | {"prompt": prompt}, tokenizer, limits, served_model, context_window)
    except ApiError as err:
        if err.param == "prompt":  # the rendered prompt is what the client sent as messages
            raise ApiError(err.status, "messages" + err.message[len("prompt") :], "messages", err.code) from None
        raise


def chat_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chat_body(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    body = completion_body(cid, model, text, finish_reason, prompt_tokens, completion_tokens)
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
    return body | {"object": "chat.completion", "choices": [choice | {"finish_reason": finish_reason}]}


def chat_event(cid: str, model: str, delta: dict, finish_reason: str | None) -> str:
    """One `chat.completion.chunk`: the first carries the role, the others text, the last the finish reason."""
    chunk = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def chat_usage_event(cid: str, model: str, prompt_tokens: int, completion_tokens: int) -> str:
    body = chat_body(cid, model, "", "", prompt_tokens, completion_tokens)
    return f"data: {json.dumps(body | {'object': 'chat.completion.chunk', 'choices': []})}\n\n"


@dataclass(frozen=True)
class ReplyShape:
    """How one endpoint words its answers: ids, the whole-reply body, stream chunks, the usage chunk."""

    new_id: Callable[[], str]
    body: Callable[..., dict]
    """(id, model, text, finish_reason, prompt_tokens, completion_tokens) → the JSON reply."""
    text_event: Callable[[str, str, str, str | None], str]
    """(id, model, text, finish_reason) → one SSE event."""
    usage_event: Callable[[str, str, int, int], str]
    opening_event: Callable[[str, str], str] | None = None
    """(id, model) → the first SSE event, before any text (chat: the assistant's role)."""


COMPLETION = ReplyShape(completion_id, completion_body, stream_event, usage_event)
CHAT = ReplyShape(
    chat_id,
    chat_body,
    lambda cid, model, text, reason: chat_event(cid, model, {"content": text} if text else {}, reason),
    chat_usage_event,
    lambda cid, model: chat_event(cid, model, {"role": "assistant", "content": ""}, None),
)
