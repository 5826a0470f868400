"""Continuous-batching decode loop for a serving replica: plain asyncio + PyTorch or llama.cpp, no Ray.

One `DecodeEngine` per model runs a single decode loop for every in-flight request. A request arriving while the
loop runs joins the batch at the next step (its prompt is prefilled and spliced into the KV cache), a finished or
abandoned request leaves it at once, and a request beyond `max_batch_size` waits for a free row. Unlike static
batching (`serve.batch`), nobody waits for a batch to fill or for a slower batch-mate to finish.

The loop runs on the caller's event loop and yields to it after every step, so new requests are parsed and admitted
between steps without a second Python thread competing for the GIL.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import NamedTuple

from minigpt_ray.export.llamacpp import LlamaCppModel
from minigpt_ray.serving.generation import BatchGenerator, GenerationRequest, TextStream
from minigpt_ray.serving.llamacpp import LlamaCppBatch


class Chunk(NamedTuple):
    text: str
    """New text since the previous chunk (complete UTF-8, stop sequences cut)."""
    finish_reason: str | None
    """None while decoding; "stop" (EOS or a stop sequence) or "length" (max_tokens) on the last chunk."""
    completion_tokens: int
    batch_size: int
    """Rows decoded in the step that produced this chunk."""


@dataclass
class _Job:
    request: GenerationRequest
    stream: TextStream
    chunks: asyncio.Queue = field(default_factory=asyncio.Queue)
    abandoned: bool = False


class DecodeEngine:
    def __init__(
        self, model, tokenizer, max_batch_size: int, admit_wait_s: float = 0.0, continuous: bool = True, on_step=None
    ):
        """`model`: a PyTorch causal LM (decoded by `BatchGenerator`) or a `LlamaCppModel` (by `LlamaCppBatch`).
        `admit_wait_s`: when the loop starts from idle, how long the first request waits for others to share its
        prefill. `continuous=False` is static batching (a batch runs until its last row ends before waiting requests
        start), kept for comparison. `on_step(rows, tokens)` is called after every step (metrics)."""
        self.model, self.tokenizer, self.max_batch_size = model, tokenizer, max_batch_size
        self.admit_wait_s, self.continuous, self.on_step = admit_wait_s, continuous, on_step
        self.batch_class = LlamaCppBatch if isinstance(model, LlamaCppModel) else BatchGenerator
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_id or 0)
        self.waiting: collections.deque[_Job] = collections.deque()
        self.running: list[_Job] = []
        self.batch: BatchGenerator | None = None
        self.loop_task: asyncio.Task | None = None
        self.broken: Exception | None = None
        """The error of the last decode step that failed as a whole (None once a step succeeds): /health reports it."""

    @property
    def backlog(self) -> int:
        """Requests that will still be waiting after the next step admits what the free rows can take."""
        free = self.max_batch_size - len(self.running)
        return max(0, sum(not job.abandoned for job in self.waiting) - free)

    def submit(self, request: GenerationRequest) -> _Job:
        """Queue a request now (synchronously: a caller that checked `backlog` has its place before anyone else
        can check); read its chunks with `chunks(job)`."""
        job = _Job(request, TextStream(self.tokenizer, request.stop))
        self.waiting.append(job)
        if self.loop_task is None or self.loop_task.done():
            self.loop_task = asyncio.get_running_loop().create_task(self._decode_loop())
        return job

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Chunks for one request, ending with the chunk that has a finish reason. Closing the iterator early
        (client gone, timeout) frees the request's row at the next step."""
        async for chunk in self.chunks(self.submit(request)):
            yield chunk

    async def chunks(self, job: _Job) -> AsyncIterator[Chunk]:
        """The chunks of a submitted request (see `generate`)."""
        try:
            while True:
                chunk = await job.chunks.get()
                if isinstance(chunk, BaseException):
                    raise chunk
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            job.abandoned = True

    async def _decode_loop(self) -> None:
        if self.admit_wait_s > 0 and len(self.waiting) < self.max_batch_size:
            await asyncio.sleep(self.admit_wait_s)
        try:
            while self.waiting or self.running:
                self._admit()
                if self.running:
                    self._step()
                    self.broken = None
                await asyncio.sleep(0)  # let handlers on this loop parse and queue new requests
        except Exception as err:  # noqa: BLE001 - every waiting client must hear about it, not hang
            self.broken = err
            for job in self.running + list(self.waiting):
                job.chunks.put_nowait(err)
            self.running, self.batch = [], None
            self.waiting.clear()

    def _admit(self) -> None:
        self.waiting = collections.deque(job for job in self.waiting if not job.abandoned)
        if self.running and not self.continuous:
            return
        room = self.max_batch_size - len(self.running)
        joining = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
        if not joining:
            return
        requests = [job.request for job in joining]
        if self.batch is None:
            self.batch = self.batch_class(self.model, requests, self.pad_id, self.eos_id)
        else:
            self.batch.add(requests)
        self.running += joining

    def _step(self) -> None:
        for i, job in enumerate(self.running):
            if job.abandoned:
                self.batch.finish(i)
        tokens = self.batch.step()
        rows = len(tokens)
        for i, (job, token) in enumerate(zip(self.running, tokens, strict=False)):
            row = self.batch.rows[i]
            if job.abandoned:
                continue
            if row.error is not None:  # this request alone failed: tell its client, keep decoding the others
                job.chunks.put_nowait(row.error)
                continue
            piece = job.stream.push(token) if token is not None else ""
            if job.stream.stopped:
                self.batch.finish(i)
                reason = "stop"
            elif row.done:
                piece += job.stream.close()
                reason = "length" if token is not None and row.generated >= job.request.max_tokens else "stop"
            else:
                reason = None
            if token is not None or reason:
                job.chunks.put_nowait(Chunk(piece, reason, len(job.stream.ids), rows))
        if self.on_step is not None:
            self.on_step(rows, sum(t is not None for t in tokens))
        self.running = [job for job, row in zip(self.running, self.batch.rows, strict=False) if not row.done]
        self.batch.compact()
        if not self.running:
            self.batch = None
