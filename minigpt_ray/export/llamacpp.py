"""llama.cpp as a runtime for GGUF exports (through llama-cpp-python's C API; plain code, no Ray).

`LlamaCppModel` holds a GGUF model and a context with KV room for several sequences: the serving replicas decode
with it (continuous batching, `serving.llamacpp`) and the sweep measures what it would serve with it
(`gguf_perplexity`, `gguf_decode_tokens_per_s`).
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from minigpt_ray.config.serve import GGUF_FILE
from minigpt_ray.logs import get_logger

log = get_logger()
GGUF_METRICS = ("gguf_type", "gguf_mb", "gguf_perplexity", "gguf_decode_tokens_per_s", "gguf_batched_tokens_per_s")
"""What `measure_gguf` reports for a candidate's GGUF form (as llama.cpp serves it)."""
_GGML_LOG_ERROR = 4  # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_log_callback = None  # the ctypes callback must outlive every llama.cpp call that may log


def _route_llama_logs(llama_cpp) -> None:
    """llama.cpp's errors go to our logger; its per-load chatter (every tensor, every buffer) is dropped."""
    global _log_callback
    if _log_callback is None:

        def forward(level: int, text: bytes, _user_data) -> None:
            if level == _GGML_LOG_ERROR:
                log.error("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

        _log_callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_log_callback, None)


def _free(llama_cpp, batch, ctx, model) -> None:
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


class Feed(NamedTuple):
    token: int
    position: int
    sequence: int
    wants_logits: bool


class LlamaCppModel:
    """A GGUF model in llama.cpp with KV room for `max_sequences` requests of up to `context` positions each."""

    def __init__(self, path: str | Path, max_sequences: int, threads: int, context: int | None = None):
        import llama_cpp

        _route_llama_logs(llama_cpp)
        self.lc = llama_cpp
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        if not self.model:
            raise ValueError(f"{path}: llama.cpp could not load this GGUF file")
        self.context = int(context or llama_cpp.llama_model_n_ctx_train(self.model))
        self.max_sequences = max_sequences
        params = llama_cpp.llama_context_default_params()
        params.n_seq_max = max_sequences
        params.n_ctx = self.context * max_sequences
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = max(1, threads)
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ValueError(f"{path}: llama.cpp could not create a context ({params.n_ctx} positions)")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.free_sequences = list(range(max_sequences - 1, -1, -1))
        self._finalizer = weakref.finalize(self, _free, llama_cpp, self.batch, self.ctx, self.model)

    def acquire_sequence(self) -> int:
        if not self.free_sequences:
            raise RuntimeError(f"all {self.max_sequences} llama.cpp sequences are in use")
        return self.free_sequences.pop()

    def reset_sequences(self) -> None:
        """Forget every sequence (a new batch starts; a failed one may have left cells behind)."""
        self.lc.llama_memory_clear(self.memory, False)  # metadata only: cells are overwritten before use
        self.free_sequences = list(range(self.max_sequences - 1, -1, -1))

    def release_sequence(self, sequence: int) -> None:
        """Forget the sequence's KV cells and make it available to the next request."""
        self.lc.llama_memory_seq_rm(self.memory, sequence, -1, -1)
        self.free_sequences.append(sequence)

    def decode(self, feeds: list[Feed]) -> list[torch.Tensor]:
        """Run `feeds` through the model (in chunks of n_batch tokens); returns the logits of each feed that wants
        them, in order."""
        logits = []
        for start in range(0, len(feeds), self.n_batch):
            chunk = feeds[start : start + self.n_batch]
            b = self.batch
            b.n_tokens = len(chunk)
            for i, feed in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i] = feed.token, feed.position, 1
                b.seq_id[i][0] = feed.sequence
                b.logits[i] = feed.wants_logits
            status = self.lc.llama_decode(self.ctx, b)
            if status != 0:
                raise RuntimeError(f"llama_decode failed with status {status} ({len(chunk)} tokens)")
            for i, feed in enumerate(chunk):
                if feed.wants_logits:
                    row = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                    logits.append(torch.from_numpy(row.copy()))
        return logits

    def close(self) -> None:
        """Free the context and the weights now (otherwise when this object is collected)."""
        self._finalizer()


def gguf_perplexity(model: LlamaCppModel, blocks: torch.Tensor) -> float:
    """Perplexity of the GGUF model on token blocks [N, T] by the evaluate.py protocol (each block predicts its
    tokens 2..T; one mean over all targets), so it compares directly with the PyTorch candidate's."""
    import math

    total_nll, count = 0.0, 0
    for block in blocks.tolist():
        model.reset_sequences()
        feeds = [Feed(token, position, 0, position < len(block) - 1) for position, token in enumerate(block)]
        logits = torch.stack(model.decode(feeds))
        total_nll += torch.nn.functional.cross_entropy(logits, torch.tensor(block[1:]), reduction="sum").item()
        count += len(block) - 1
    model.reset_sequences()
    return math.exp(min(total_nll / max(1, count), 50.0))


def gguf_decode_tokens_per_s(
    model: LlamaCppModel, prompt: list[int], new_tokens: int = 32, repeats: int = 2, rows: int = 1
) -> float:
    """Greedy decode speed in tokens/s summed over `rows` sequences of the same prompt decoded together (one
    llama_decode per step), best of `repeats` after one warm-up: the protocol of the PyTorch candidates'
    `decode_tokens_per_s`."""
    best = float("inf")
    last = len(prompt) - 1
    for attempt in range(repeats + 1):
        model.reset_sequences()
        start = time.perf_counter()
        logits = model.decode([Feed(t, p, s, p == last) for s in range(rows) for p, t in enumerate(prompt)])
        for position in range(len(prompt), len(prompt) + new_tokens - 1):
            logits = model.decode([Feed(int(torch.argmax(x)), position, s, True) for s, x in enumerate(logits)])
        if attempt:  # the first run warms up
            best = min(best, time.perf_counter() - start)
    model.reset_sequences()
    return rows * new_tokens / best


def measure_gguf(directory: str | Path, eval_blocks: torch.Tensor, prompt: list[int], decode_tokens: int, threads: int):
    """Write `<directory>/model.gguf` for a saved candidate (the file llama.cpp will serve) and measure it there:
    the GGUF_METRICS (batch-1 and BATCHED_ROWS-at-once decode speed). Returns {} (writing nothing) when
    llama.cpp is not installed or the model has no GGUF form (not Llama-style); why is logged."""
    import importlib.util

    from minigpt_ray.compress.artifact import load_model_dir
    from minigpt_ray.compress.candidate import BATCHED_ROWS
    from minigpt_ray.config import ConfigError
    from minigpt_ray.export.gguf import write_gguf

    if importlib.util.find_spec("llama_cpp") is None:
        log.info("no GGUF measurements: llama-cpp-python is not installed")
        return {}
    path = Path(directory) / GGUF_FILE
    model, tokenizer = load_model_dir(directory)
    try:
        quant = write_gguf(model, tokenizer, path, "auto", Path(directory).name)
    except ConfigError as err:
        path.unlink(missing_ok=True)
        log.info("no GGUF form for %s: %s", directory, err)
        return {}
    context = max(eval_blocks.shape[1], len(prompt) + decode_tokens)
    runtime = LlamaCppModel(path, max_sequences=BATCHED_ROWS, threads=threads, context=context)
    try:
        return {
            "gguf_type": quant,
            "gguf_mb": path.stat().st_size / 1e6,
            "gguf_perplexity": gguf_perplexity(runtime, eval_blocks),
            "gguf_decode_tokens_per_s": gguf_decode_tokens_per_s(runtime, prompt, decode_tokens),
            "gguf_batched_tokens_per_s": gguf_decode_tokens_per_s(runtime, prompt, decode_tokens, rows=BATCHED_ROWS),
        }
    finally:
        runtime.close()
