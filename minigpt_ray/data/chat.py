"""Chat / instruction data: conversations rendered through the tokenizer's chat template, with only the assistant's
tokens trained (TRL's and torchtune's masked SFT loss). Plain Python, no Ray.

A conversation is cut into segments by rendering its prefixes: what `messages[:k]` renders to is a prefix of what
`messages[:k+1]` renders to, and the assistant's reply is what follows the generation prompt
(`add_generation_prompt=True`). Segments are tokenized one by one, so a token never straddles a trained and an
untrained segment; the server tokenizes the same text in one piece, which gives the same tokens at these boundaries
(a newline or a special token)."""

from __future__ import annotations

from minigpt_ray.config import ConfigError

ROLES = ("system", "user", "assistant")


def check_messages(messages, origin: str) -> tuple[tuple[str, str], ...]:
    """A conversation as ((role, content), ...): a non-empty list of {role, content} with a known role, string
    content and at least one assistant message (nothing to train on otherwise)."""
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"data.sources: {origin}: messages must be a non-empty list")
    turns = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise ConfigError(
                f"data.sources: {origin}: messages[{index}] must be {{role: {'|'.join(ROLES)}, content: string}}"
            )
        turns.append((role, content))
    if not any(role == "assistant" for role, _ in turns):
        raise ConfigError(f"data.sources: {origin}: a conversation needs an assistant message to train on")
    return tuple(turns)


def _render(tokenizer, turns, generation_prompt: bool = False) -> str:
    if not turns and not generation_prompt:
        return ""
    messages = [{"role": role, "content": content} for role, content in turns]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_segments(tokenizer, turns) -> list[tuple[str, bool]]:
    """(text, trained) pieces of a rendered conversation, in order; trained = the assistant's replies (with the
    end-of-turn marker the template puts after them, so the model learns to stop)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.sources: chat messages need a tokenizer with a chat template (the presets have one)")
    segments, done = [], ""
    for k, (role, _) in enumerate(turns):
        if role == "assistant":
            header = _render(tokenizer, turns[:k], generation_prompt=True)
            _check_prefix(done, header)
            segments.append((header[len(done) :], False))
            done = header
        after = _render(tokenizer, turns[: k + 1])
        _check_prefix(done, after)
        segments.append((after[len(done) :], role == "assistant"))
        done = after
    return [(text, trained) for text, trained in segments if text]


def _check_prefix(done: str, rendered: str) -> None:
    if not rendered.startswith(done):
        raise ConfigError(
            "data.sources: the tokenizer's chat template does not render a conversation turn by turn (a shorter "
            "conversation is not a prefix of a longer one), so the assistant's tokens cannot be masked"
        )


def chat_token_ids(tokenizer, turns) -> tuple[list[int], list[bool]]:
    """Token ids of a rendered conversation and, per token, whether it is trained."""
    ids: list[int] = []
    trained: list[bool] = []
    for text, is_trained in chat_segments(tokenizer, turns):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        trained += [is_trained] * len(piece)
    return ids, trained
