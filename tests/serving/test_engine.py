"""Continuous batching in the replica's decode loop (asyncio + PyTorch, no Ray): requests join a running batch,
leave it when done or abandoned, queue beyond max_batch_size, and each gets exactly its solo output."""

from __future__ import annotations

import asyncio

import pytest
from transformers import AutoModelForCausalLM

from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.serving.engine import DecodeEngine
from minigpt_ray.serving.generation import BatchGenerator, GenerationRequest, TextStream

PROMPTS = ["中国人民", "经济", "今天天气", "在北京举行的会议上，", "发展"]


@pytest.fixture(scope="module")
def zh(tiny_zh_model):
    return AutoModelForCausalLM.from_pretrained(tiny_zh_model["dir"]).eval(), load_tokenizer(tiny_zh_model["dir"])


def request(tokenizer, prompt, n, **kw):
    kw.setdefault("temperature", 0)
    return GenerationRequest(tokenizer(prompt, add_special_tokens=False)["input_ids"], max_tokens=n, **kw)


def solo_text(model, tokenizer, req) -> str:
    generator = BatchGenerator(model, [req], tokenizer.eos_token_id, tokenizer.eos_token_id)
    stream, text = TextStream(tokenizer, req.stop), ""
    while generator.active and not stream.stopped:
        token = generator.step()[0]
        text += stream.push(token) if token is not None else ""
    return text + stream.close()


async def collect(engine, req, start_after: asyncio.Event | None = None, chunks_seen: list | None = None):
    if start_after is not None:
        await start_after.wait()
    chunks = []
    async for chunk in engine.generate(req):
        chunks.append(chunk)
        if chunks_seen is not None:
            chunks_seen.append(chunk)
    return chunks


def test_late_requests_join_the_running_batch_and_match_solo_decodes(zh):
    model, tokenizer = zh
    reqs = [request(tokenizer, p, 10 + 6 * i) for i, p in enumerate(PROMPTS[:4])]
    reqs.append(request(tokenizer, PROMPTS[4], 16, temperature=0.9, top_p=0.9, seed=7))

    async def scenario():
        engine = DecodeEngine(model, tokenizer, max_batch_size=8)
        first_chunks, joined = [], asyncio.Event()

        async def trigger():
            while len(first_chunks) < 3:
                await asyncio.sleep(0)
            joined.set()

        results = await asyncio.gather(
            collect(engine, reqs[0], chunks_seen=first_chunks),
            trigger(),
            *[collect(engine, r, joined) for r in reqs[1:]],
        )
        assert engine.running == [] and engine.batch is None and not engine.waiting
        return [results[0]] + results[2:]

    results = asyncio.run(scenario())
    for req, chunks in zip(reqs, results, strict=False):
        assert "".join(c.text for c in chunks) == solo_text(model, tokenizer, req)
        assert chunks[-1].finish_reason in ("length", "stop") and all(c.finish_reason is None for c in chunks[:-1])
    assert results[0][0].batch_size == 1  # the first request did not wait for company
    assert max(c.batch_size for c in results[0]) == 5  # ... and the late ones joined its batch mid-way
    assert results[0][-1].completion_tokens <= 10


def test_abandoned_request_frees_its_row_and_others_are_unaffected(zh):
    model, tokenizer = zh
    long_req, other = request(tokenizer, PROMPTS[0], 40), request(tokenizer, PROMPTS[2], 24)

    async def scenario():
        engine = DecodeEngine(model, tokenizer, max_batch_size=4)

        async def abandon_after_two():
            stream = engine.generate(long_req)
            got = [await anext(stream), await anext(stream)]
            await stream.aclose()  # the client went away
            return got

        got, other_chunks = await asyncio.gather(abandon_after_two(), collect(engine, other))
        sizes = [c.batch_size for c in other_chunks]
        return got, other_chunks, sizes

    got, other_chunks, sizes = asyncio.run(scenario())
    assert len(got) == 2
    assert "".join(c.text for c in other_chunks) == solo_text(model, tokenizer, other)
    assert sizes[0] == 2 and sizes[-1] == 1  # the abandoned row left the batch


def test_requests_beyond_max_batch_size_queue_for_a_free_row(zh):
    model, tokenizer = zh
    reqs = [request(tokenizer, p, 8) for p in PROMPTS]

    async def scenario():
        engine = DecodeEngine(model, tokenizer, max_batch_size=2)
        return await asyncio.gather(*[collect(engine, r) for r in reqs])

    results = asyncio.run(scenario())
    assert max(c.batch_size for chunks in results for c in chunks) == 2
    for req, chunks in zip(reqs, results, strict=False):
        assert "".join(c.text for c in chunks) == solo_text(model, tokenizer, req)


def test_a_failing_step_reaches_every_waiting_client(zh):
    model, tokenizer = zh

    class Broken(Exception):
        pass

    failures = [Broken("decode step failed")]

    def explode(*_):
        if failures:
            raise failures.pop()

    async def scenario():
        engine = DecodeEngine(model, tokenizer, max_batch_size=4, on_step=explode)
        outcomes = await asyncio.gather(
            *[collect(engine, request(tokenizer, p, 8)) for p in PROMPTS[:3]], return_exceptions=True
        )
        broken = engine.broken  # what /health reports until a step succeeds again
        recovered = await collect(engine, request(tokenizer, PROMPTS[0], 4))
        return outcomes, recovered, broken, engine.broken

    outcomes, recovered, broken, after = asyncio.run(scenario())
    assert all(isinstance(o, Broken) for o in outcomes)  # nobody hangs
    assert isinstance(broken, Broken) and after is None
    # the engine starts clean for the next request
    assert "".join(c.text for c in recovered) == solo_text(model, tokenizer, request(tokenizer, PROMPTS[0], 4))


def test_a_timed_out_request_leaves_the_batch(zh):
    """The replica's request timeout cancels the waiting coroutine; its row must not keep decoding."""
    model, tokenizer = zh
    slow, other = request(tokenizer, PROMPTS[1], 60), request(tokenizer, PROMPTS[3], 20)

    async def scenario():
        engine = DecodeEngine(model, tokenizer, max_batch_size=4)
        slow_task = asyncio.get_running_loop().create_task(collect(engine, slow))
        other_chunks = []
        async for chunk in engine.generate(other):
            other_chunks.append(chunk)
            if len(other_chunks) == 3:
                # What the replica's timeout does (asyncio.wait_for cancels the waiting task), at a point fixed by
                # decode steps rather than wall time: a 20 ms timeout raced a tiny model's 20 steps on fast CPUs.
                slow_task.cancel()
        outcome = (await asyncio.gather(slow_task, return_exceptions=True))[0]
        return outcome, other_chunks, engine

    outcome, other_chunks, engine = asyncio.run(scenario())
    assert isinstance(outcome, asyncio.CancelledError)
    assert other_chunks[0].batch_size == 2  # the two requests shared the batch before the cancel
    assert other_chunks[-1].batch_size == 1 and engine.batch is None
    assert "".join(c.text for c in other_chunks) == solo_text(model, tokenizer, other)


def test_static_mode_runs_a_batch_to_its_end_before_queued_requests_start(zh):
    model, tokenizer = zh
    first, late = request(tokenizer, PROMPTS[0], 10), request(tokenizer, PROMPTS[1], 6)

    async def scenario():
        engine = DecodeEngine(model, tokenizer, max_batch_size=8, continuous=False)
        order, started = [], asyncio.Event()

        async def track(req, name, gate=None):
            if gate is not None:
                await gate.wait()
            async for chunk in engine.generate(req):
                order.append((name, chunk.batch_size))
                if name == "first" and len(order) == 3:
                    started.set()

        await asyncio.gather(track(first, "first"), track(late, "late", started))
        return order

    order = asyncio.run(scenario())
    names = [name for name, _ in order]
    assert names.index("late") > max(i for i, n in enumerate(names) if n == "first")  # waited for the batch
    assert all(size == 1 for _, size in order)


def test_one_requests_sampling_failure_ends_only_that_request(zh, monkeypatch):
    from minigpt_ray.serving import generation

    model, tokenizer = zh
    real_choose = generation.choose_token

    def choose(row, logits):  # a failure that only one request's settings trigger
        if row.request.seed == 666 and row.generated == 2:
            raise FloatingPointError("sampling overflowed")
        return real_choose(row, logits)

    monkeypatch.setattr(generation, "choose_token", choose)
    good = [request(tokenizer, p, 10) for p in PROMPTS[:3]]
    poisoned = request(tokenizer, PROMPTS[3], 10, temperature=0.8, seed=666)

    async def scenario():
        engine = DecodeEngine(model, tokenizer, max_batch_size=8)
        outcomes = await asyncio.gather(*(collect(engine, r) for r in [*good, poisoned]), return_exceptions=True)
        return outcomes, engine.broken

    outcomes, broken = asyncio.run(scenario())
    assert isinstance(outcomes[-1], FloatingPointError) and broken is None
    for req, chunks in zip(good, outcomes[:-1], strict=True):
        assert "".join(c.text for c in chunks) == solo_text(model, tokenizer, req)
