"""Continuous batching on llama.cpp for GGUF models: the batch interface of `generation.BatchGenerator`, no Ray.

Each request gets its own llama.cpp sequence (its own KV cells). One `llama_decode` call per step feeds every running
row its new token and every joining row its whole prompt, the same join-within-the-step design as the PyTorch batch,
so a join costs no extra pass over the weights. Tokens are chosen in Python from each row's logits with the same
sampling code and per-request seeded generator as the PyTorch path, so a request's settings mean the same on either
runtime. Tokenization stays with the Hugging Face tokenizer saved beside the GGUF (the export embeds the same
byte-level BPE, so llama.cpp itself would produce the same ids).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minigpt_ray.export.llamacpp import Feed, LlamaCppModel
from minigpt_ray.serving.generation import GenerationRequest, Row, advance_row, new_rows


@dataclass
class LlamaCppRow(Row):
    """A row with its llama.cpp sequence, next position and the logits its next token is chosen from."""

    sequence: int = 0
    position: int = 0
    logits: torch.Tensor | None = None


class LlamaCppBatch:
    """Continuous batching over one `LlamaCppModel`: `add` requests, `step()` for one token per active row (None for
    finished or joining rows), `finish(i)` to stop row i, `compact()` to drop finished rows."""

    def __init__(self, model: LlamaCppModel, requests: list[GenerationRequest], pad_id: int, eos_id: int | None):
        self.model, self.eos_id = model, eos_id
        self.rows: list[LlamaCppRow] = []
        model.reset_sequences()  # one batch per model at a time: whatever an earlier one held is free now
        if requests:
            self.add(requests)

    def add(self, requests: list[GenerationRequest]) -> None:
        """An empty batch prefills `requests` now; otherwise they are prefilled within the next `step()`."""
        joining = [
            LlamaCppRow(row.request, row.generator, sequence=self.model.acquire_sequence())
            for row in new_rows(requests)
        ]
        if not self.rows:
            self._run([], joining)
        self.rows += joining

    def _run(self, running: list[tuple[LlamaCppRow, int]], joining: list[LlamaCppRow]) -> None:
        feeds = [Feed(token, row.position, row.sequence, True) for row, token in running]
        for row in joining:
            prompt = row.request.prompt_ids
            feeds += [Feed(t, p, row.sequence, p == len(prompt) - 1) for p, t in enumerate(prompt)]
        logits = self.model.decode(feeds)
        for row, out in zip([r for r, _ in running] + joining, logits, strict=True):
            row.logits = out
        for row, _ in running:
            row.position += 1
        for row in joining:
            row.position, row.prefilled = len(row.request.prompt_ids), True

    def step(self) -> list[int | None]:
        chosen = [advance_row(row, row.logits, self.eos_id) for row in self.rows]
        running = [(row, t) for row, t in zip(self.rows, chosen, strict=True) if t is not None and not row.done]
        joining = [row for row in self.rows if not row.prefilled and not row.done]
        if running or joining:
            self._run(running, joining)
        return chosen

    def finish(self, i: int) -> None:
        self.rows[i].done = True

    @property
    def active(self) -> bool:
        return any(not row.done for row in self.rows)

    def compact(self) -> None:
        for row in self.rows:
            if row.done:
                self.model.release_sequence(row.sequence)
        self.rows = [row for row in self.rows if not row.done]
