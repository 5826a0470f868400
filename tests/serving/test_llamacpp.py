"""Continuous batching on llama.cpp (real llama-cpp-python, no Ray): the GGUF export decodes the same tokens as the
PyTorch model, alone or with requests joining mid-way, and every sequence is handed back when its request ends."""

from __future__ import annotations

import asyncio

import pytest
from transformers import AutoModelForCausalLM

from minigpt_ray.export import GGUF_FILE, export_gguf
from minigpt_ray.export.llamacpp import LlamaCppModel
from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.serving.engine import DecodeEngine
from minigpt_ray.serving.generation import BatchGenerator, GenerationRequest
from minigpt_ray.serving.llamacpp import LlamaCppBatch

PROMPTS = ["ROMEO:", "JULIET: O", "First Citizen:\nBefore we proceed any further, hear me speak.", "KING"]


@pytest.fixture(scope="module")
def exported(tiny_trained, tmp_path_factory):
    """The tiny model as an f32 GGUF (same arithmetic as PyTorch up to summation order) and its PyTorch twin."""
    out = tmp_path_factory.mktemp("gguf")
    export_gguf(tiny_trained["dir"], out / "f32", "f32")
    model = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"]).eval()
    return out / "f32" / GGUF_FILE, model, load_tokenizer(tiny_trained["dir"])


def greedy(tokenizer, prompt: str, n: int, **kw) -> GenerationRequest:
    kw.setdefault("temperature", 0)
    return GenerationRequest(tokenizer(prompt, add_special_tokens=False)["input_ids"], max_tokens=n, **kw)


def run_to_end(batch, late: list[GenerationRequest] = (), join_at: int = 3) -> list[list[int]]:
    """Tokens per row; `late` requests join after `join_at` steps."""
    out: dict[int, list[int]] = {id(row.request): [] for row in batch.rows} | {id(r): [] for r in late}
    step = 0
    while batch.active:
        if step == join_at and late:
            batch.add(list(late))
        for row, token in zip(batch.rows, batch.step(), strict=True):
            if token is not None:
                out[id(row.request)].append(token)
        batch.compact()
        step += 1
    return out


def test_greedy_tokens_match_pytorch_alone_and_when_joining_mid_batch(exported):
    path, model, tokenizer = exported
    eos = tokenizer.eos_token_id
    first = [greedy(tokenizer, p, 20) for p in PROMPTS[:2]]
    late = [greedy(tokenizer, p, 12 + 4 * i) for i, p in enumerate(PROMPTS[2:])]
    expected = {}
    for req in first + late:  # each request decoded alone by the PyTorch batch
        expected.update(run_to_end(BatchGenerator(model, [req], eos, eos)))
    runtime = LlamaCppModel(path, max_sequences=4, threads=1)
    got = run_to_end(LlamaCppBatch(runtime, first, eos, eos), late)
    assert [got[id(r)] for r in first + late] == [expected[id(r)] for r in first + late]
    assert sorted(runtime.free_sequences) == [0, 1, 2, 3]  # every sequence handed back
    runtime.close()


def test_seeded_sampling_repeats_and_max_tokens_is_respected(exported):
    path, _, tokenizer = exported
    runtime = LlamaCppModel(path, max_sequences=2, threads=1)
    eos = tokenizer.eos_token_id

    def sample():
        req = greedy(tokenizer, "ROMEO:", 24, temperature=1.0, top_p=0.9, seed=11)
        return run_to_end(LlamaCppBatch(runtime, [req], eos, eos))[id(req)]

    a, b = sample(), sample()
    assert a == b and 1 <= len(a) <= 24
    runtime.close()


def test_decode_engine_serves_more_requests_than_sequences(exported):
    path, _, tokenizer = exported
    runtime = LlamaCppModel(path, max_sequences=2, threads=1)
    reqs = [greedy(tokenizer, PROMPTS[i % 4], 6 + i) for i in range(5)]

    async def scenario():
        engine = DecodeEngine(runtime, tokenizer, max_batch_size=2)

        async def one(req):
            return [chunk async for chunk in engine.generate(req)]

        return await asyncio.gather(*(one(r) for r in reqs))

    results = asyncio.run(scenario())
    for req, chunks in zip(reqs, results, strict=True):
        assert chunks[-1].finish_reason in ("length", "stop")
        assert max(c.batch_size for c in chunks) <= 2
        if chunks[-1].finish_reason == "length":
            assert chunks[-1].completion_tokens == req.max_tokens
    assert sorted(runtime.free_sequences) == [0, 1]
    runtime.close()
