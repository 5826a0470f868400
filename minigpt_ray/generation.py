"""Batched, streaming text generation for serving: plain PyTorch + transformers, no Ray.

`BatchGenerator` decodes several requests at once with a KV cache: prompts are left-padded, the attention mask
hides the padding and position ids restart at 0 for every row, so a row's greedy output is the same whether it is
decoded alone or in a batch. Each row has its own sampling settings and its own seeded torch.Generator.
`TextStream` turns a row's token ids into text safely: byte-level BPE can split one Chinese character over several
tokens, so text is only released once it decodes without U+FFFD, and text that might be the start of a stop
sequence is held back until it is clearly not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int = 16
    temperature: float = 1.0
    """0 = greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 = no top-k cut."""
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


def _filtered_logits(logits: torch.Tensor, request: GenerationRequest) -> torch.Tensor:
    logits = logits / request.temperature
    if request.top_k and request.top_k < logits.numel():
        kth = torch.topk(logits, request.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if request.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= request.top_p  # keep the first token always
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


class BatchGenerator:
    """Step-by-step decoding of a batch of requests; `step()` returns one new token id per active row."""

    def __init__(self, model, requests: list[GenerationRequest], pad_id: int, eos_id: int | None):
        self.model, self.requests, self.pad_id, self.eos_id = model, requests, pad_id, eos_id
        self.done = [False] * len(requests)
        self.generated = [0] * len(requests)
        seeds = [r.seed if r.seed is not None else int.from_bytes(os.urandom(4), "little") for r in requests]
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.device = next(model.parameters()).device
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        self.mask = mask.to(self.device)
        self.positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        self.next_logits = self._forward(ids.to(self.device), self.positions)

    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1].float().cpu()  # token choice on CPU: per-row CPU generators, tiny vocab

    def _choose(self, i: int) -> int:
        request, logits = self.requests[i], self.next_logits[i]
        if request.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(_filtered_logits(logits, request), dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generators[i]))

    def finish(self, i: int) -> None:
        """Stop row i (a stop sequence matched, or the client went away)."""
        self.done[i] = True

    @property
    def active(self) -> bool:
        return not all(self.done)

    def step(self) -> list[int | None]:
        """One token for every active row (None for finished rows). Rows end at EOS or max_tokens."""
        chosen: list[int | None] = []
        for i, request in enumerate(self.requests):
            if self.done[i]:
                chosen.append(None)
                continue
            token = self._choose(i)
            self.generated[i] += 1
            if token == self.eos_id:
                self.done[i] = True
                chosen.append(None)
                continue
            chosen.append(token)
            if self.generated[i] >= request.max_tokens:
                self.done[i] = True
        if self.active:
            feed = torch.tensor([[t if t is not None else self.pad_id] for t in chosen], dtype=torch.long,
                                device=self.device)
            self.mask = torch.cat([self.mask, torch.ones((len(chosen), 1), dtype=torch.long, device=self.device)],
                                  dim=1)
            self.positions = self.positions[:, -1:] + 1
            self.next_logits = self._forward(feed, self.positions)
        return chosen


class TextStream:
    """Token ids → text pieces that are complete UTF-8 and cut at the first stop sequence."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already released
        self.released = ""
        self.stopped = False

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self._text()
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its next bytes
            return ""
        return self._release(text, final=False)

    def close(self) -> str:
        """Whatever is still held back, at the end of generation."""
        if self.stopped:
            return ""
        return self._release(self._text().rstrip("\ufffd"), final=True)

    def _release(self, text: str, final: bool) -> str:
        for stop in self.stop:
            at = text.find(stop, max(0, self.sent - len(stop) + 1))
            if at != -1:
                self.stopped = True
                piece, self.sent = text[self.sent:at], at
                self.released += piece
                return piece
        end = len(text)
        if not final:  # hold back a tail that could still grow into a stop sequence
            for stop in self.stop:
                for k in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:k]):
                        end = min(end, len(text) - k)
                        break
        end = max(end, self.sent)
        piece, self.sent = text[self.sent:end], end
        self.released += piece
        return piece
