"""Batched, streaming text generation for serving: plain PyTorch + transformers, no Ray.

`BatchGenerator` decodes several requests at once with a KV cache and lets requests join and leave between steps
(continuous batching): prompts are left-padded, the attention mask hides every padding column and position ids are
kept per row, so a row's greedy output is the same whether it is decoded alone, in a batch, or joined mid-way.
Each row has its own sampling settings and its own seeded torch.Generator.
`TextStream` turns a row's token ids into text safely: byte-level BPE can split one Chinese character over several
tokens, so text is only released once it decodes without U+FFFD, and text that might be the start of a stop
sequence is held back until it is clearly not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


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
    ignore_eos: bool = False
    """Decode past EOS until max_tokens (vLLM's extension of the OpenAI API; benchmarks use it for fixed lengths)."""


def filtered_logits(logits: torch.Tensor, request: GenerationRequest) -> torch.Tensor:
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


@dataclass
class Row:
    """One request in a running batch."""

    request: GenerationRequest
    generator: torch.Generator
    generated: int = 0
    done: bool = False
    prefilled: bool = False
    """False until the step that feeds its prompt (rows that joined a running batch wait for one step)."""
    error: Exception | None = None
    """Why this row alone failed (its token could not be chosen); the row is done and its client is told."""


GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily (as vLLM does): dividing logits by them overflows to inf."""


def choose_token(row: Row, logits: torch.Tensor) -> int:
    """Greedy at temperature ~0, else a draw from the filtered distribution with the row's own generator."""
    if row.request.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    probs = torch.softmax(filtered_logits(logits, row.request), dim=-1)
    return int(torch.multinomial(probs, 1, generator=row.generator))


def advance_row(row: Row, logits: torch.Tensor | None, eos_id: int | None) -> int | None:
    """Choose the row's next token from `logits` and update its state; None when it is finished or not yet
    prefilled (EOS ends the row and is never returned)."""
    if row.done or not row.prefilled:
        return None
    try:
        token = choose_token(row, logits)
    except Exception as err:  # noqa: BLE001 - one row's failure ends that row only, not its batch-mates
        row.error, row.done = err, True
        return None
    row.generated += 1
    if token == eos_id and not row.request.ignore_eos:
        row.done = True
        return None
    row.done = row.generated >= row.request.max_tokens
    return token


def new_rows(requests: list[GenerationRequest]) -> list[Row]:
    """Rows for `requests`, each with its own generator (seeded by the request, else at random)."""
    seeds = [r.seed if r.seed is not None else int.from_bytes(os.urandom(4), "little") for r in requests]
    return [Row(r, torch.Generator().manual_seed(s)) for r, s in zip(requests, seeds, strict=True)]


def _cache_layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = list(cache.layers)
    if any(type(layer) is not DynamicLayer for layer in layers):
        raise ValueError("continuous batching needs a plain DynamicCache (no sliding-window or static layers)")
    return layers


def _left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of prompts right-aligned in one [rows, longest] block."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt)
        mask[i, width - len(prompt) :] = 1
    return ids, mask


REPACK_SLACK = 16
"""Cache columns beyond the longest live row tolerated before the batch is repacked (repacking copies the cache)."""


class BatchGenerator:
    """Continuous batching: step-by-step decoding of a batch that requests can join (`add`) and leave (`compact`)
    between steps. `step()` returns one new token id (or None) per row of `rows`.

    Requests that join a running batch are prefilled inside the next decode step, in the same forward pass: that
    step feeds the running rows their one new token (right-aligned, masked padding before it) and the newcomers
    their whole prompt, so a join costs no extra pass over the weights. Rows that leave are cut out of the KV cache
    and leading columns that no remaining row attends to are trimmed."""

    def __init__(self, model, requests: list[GenerationRequest], pad_id: int, eos_id: int | None):
        self.model, self.pad_id, self.eos_id = model, pad_id, eos_id
        self.device = next(model.parameters()).device
        self.rows: list[Row] = []  # prefilled rows first (they are the cache's batch rows), then joining ones
        self.cache: DynamicCache | None = None
        self.mask = self.positions = self.next_logits = None
        if requests:
            self.add(requests)

    @torch.no_grad()
    def _forward(self, ids, mask, positions, cache) -> tuple[torch.Tensor, DynamicCache]:
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        )
        return out.logits[:, -1].float().cpu(), out.cache  # token choice on CPU: per-row generators, tiny vocab

    def add(self, requests: list[GenerationRequest]) -> None:
        """Append `requests` as rows. An empty batch prefills them now; otherwise they join at the next `step()`.
        Their first token comes with the step after their prefill."""
        joining = new_rows(requests)
        if self.cache is None:
            ids, mask = _left_padded([r.prompt_ids for r in requests], self.pad_id)
            self.mask = mask.to(self.device)
            positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)
            self.next_logits, self.cache = self._forward(ids.to(self.device), self.mask, positions, DynamicCache())
            self.positions = positions[:, -1:]
            for row in joining:
                row.prefilled = True
        self.rows += joining

    def compact(self) -> None:
        """Drop finished rows, trim leading cache columns that every remaining row masks out, and repack a cache
        that joins have made much wider than its longest row."""
        if any(row.done for row in self.rows):
            self._drop_finished()
        if self.mask is not None:
            self._repack_if_wide()

    def _drop_finished(self) -> None:
        """Cut finished rows out of the cache and trim its leading all-padding columns."""
        # prefilled rows, in list order, are the cache's batch rows 0, 1, ...
        keep = [slot for slot, row in enumerate(r for r in self.rows if r.prefilled) if not row.done]
        self.rows = [row for row in self.rows if not row.done]
        if not keep:
            self.cache = self.mask = self.positions = self.next_logits = None
            if self.rows:  # only joining rows are left: they start a fresh batch (no token drawn from them yet)
                joining, self.rows = self.rows, []
                self.add([row.request for row in joining])
                for row, old in zip(self.rows, joining, strict=False):
                    row.generator = old.generator
            return
        index = torch.tensor(keep, device=self.device)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.next_logits = self.next_logits[torch.tensor(keep)]
        unused = int(self.mask.cumsum(dim=1).eq(0).all(dim=0).sum())  # leading all-padding columns
        self.mask = self.mask[:, unused:]
        for layer in _cache_layers(self.cache):
            layer.keys, layer.values = layer.keys[index, :, unused:], layer.values[index, :, unused:]

    def _repack_if_wide(self) -> None:
        """Keep the cache at most REPACK_SLACK columns wider than its longest row. A join pads every running row by
        the joining prompt's width in the middle of its history, and trimming only drops leading columns, so under
        churn the cache (and each step's attention) would grow without bound. Repacking moves each row's attended
        columns to the right end of a cache as wide as the longest row; cached keys carry their rotary positions and
        position ids are kept per row, so attention sees exactly what it saw before."""
        lengths = self.mask.sum(dim=1)
        width = int(lengths.max())
        if self.mask.shape[1] <= width + REPACK_SLACK:
            return
        keep = [self.mask[i].nonzero().squeeze(1) for i in range(self.mask.shape[0])]
        mask = torch.zeros((len(keep), width), dtype=self.mask.dtype, device=self.device)
        for i, cols in enumerate(keep):
            mask[i, width - len(cols) :] = 1
        for layer in _cache_layers(self.cache):
            keys = layer.keys.new_zeros(*layer.keys.shape[:2], width, layer.keys.shape[3])
            values = layer.values.new_zeros(*layer.values.shape[:2], width, layer.values.shape[3])
            for i, cols in enumerate(keep):
                keys[i, :, width - len(cols) :] = layer.keys[i, :, cols]
                values[i, :, width - len(cols) :] = layer.values[i, :, cols]
            layer.keys, layer.values = keys, values
        self.mask = mask

    def _advance(self, i: int) -> int | None:
        return advance_row(self.rows[i], self.next_logits[i] if self.rows[i].prefilled else None, self.eos_id)

    def finish(self, i: int) -> None:
        """Stop row i (a stop sequence matched, or the client went away)."""
        self.rows[i].done = True

    @property
    def active(self) -> bool:
        return any(not row.done for row in self.rows)

    def step(self) -> list[int | None]:
        """One token for every active prefilled row (None for finished or joining rows); joining rows are
        prefilled in the same forward pass. Rows end at EOS or max_tokens."""
        chosen = [self._advance(i) for i in range(len(self.rows))]
        joining = [row for row in self.rows if not row.prefilled and not row.done]
        if not self.active:
            return chosen
        # the cache's batch rows, in order: the rows that were prefilled before this step
        feed = [t if t is not None else self.pad_id for t, row in zip(chosen, self.rows, strict=False) if row.prefilled]
        if not joining:
            ids = torch.tensor(feed, dtype=torch.long).view(-1, 1)
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(feed), 1))], dim=1)
            self.positions = self.positions + 1
            self.next_logits, self.cache = self._forward(ids.to(self.device), self.mask, self.positions, self.cache)
        else:
            self._step_with_joining(feed, joining)
        return chosen

    def _step_with_joining(self, feed: list[int], joining: list[Row]) -> None:
        """One forward pass: running rows get [masked pads..., new token], joining rows their left-padded prompt
        (and an all-masked history, so the cache rows line up)."""
        new_ids, new_mask = _left_padded([row.request.prompt_ids for row in joining], self.pad_id)
        cached, width, history = len(feed), new_ids.shape[1], self.mask.shape[1]
        old_ids = torch.full((cached, width), self.pad_id, dtype=torch.long)
        old_ids[:, -1] = torch.tensor(feed, dtype=torch.long)
        old_mask = torch.zeros((cached, width), dtype=torch.long)
        old_mask[:, -1] = 1
        new_mask = new_mask.to(self.device)
        self.mask = torch.cat(
            [
                torch.cat([self.mask, old_mask.to(self.device)], dim=1),
                torch.cat([self.mask.new_zeros(len(joining), history), new_mask], dim=1),
            ],
            dim=0,
        )
        positions = torch.cat(
            [
                (self.positions + 1).expand(cached, width),  # padding positions are never attended
                (new_mask.cumsum(dim=1) - 1).clamp(min=0),
            ],
            dim=0,
        )
        for layer in _cache_layers(self.cache):
            layer.keys = torch.cat([layer.keys, layer.keys.new_zeros(len(joining), *layer.keys.shape[1:])])
            layer.values = torch.cat([layer.values, layer.values.new_zeros(len(joining), *layer.values.shape[1:])])
        ids = torch.cat([old_ids, new_ids], dim=0).to(self.device)
        self.next_logits, self.cache = self._forward(ids, self.mask, positions, self.cache)
        self.positions = positions[:, -1:]
        for row in joining:
            row.prefilled = True


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
                piece, self.sent = text[self.sent : at], at
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
        piece, self.sent = text[self.sent : end], end
        self.released += piece
        return piece
