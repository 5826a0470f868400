"""Batched decoding and UTF-8-safe streaming text, without Ray."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.serving.generation import BatchGenerator, GenerationRequest, Row, TextStream, advance_row

PROMPTS = ["中国人民", "经济", "今天天气", "在北京举行的会议上，"]


@pytest.fixture(scope="module")
def zh(tiny_zh_model):
    return AutoModelForCausalLM.from_pretrained(tiny_zh_model["dir"]).eval(), load_tokenizer(tiny_zh_model["dir"])


def decode_all(model, tokenizer, requests):
    generator = BatchGenerator(model, requests, tokenizer.eos_token_id, tokenizer.eos_token_id)
    outputs = [[] for _ in requests]
    while generator.active:
        for i, token in enumerate(generator.step()):
            if token is not None:
                outputs[i].append(token)
    return outputs


def greedy(tokenizer, prompt, n=24, **kw):
    return GenerationRequest(
        tokenizer(prompt, add_special_tokens=False)["input_ids"], max_tokens=n, temperature=0, **kw
    )


def test_batched_greedy_equals_single_and_hf_generate(zh):
    model, tokenizer = zh
    requests = [greedy(tokenizer, p) for p in PROMPTS]
    batched = decode_all(model, tokenizer, requests)
    for request, tokens in zip(requests, batched, strict=False):
        assert decode_all(model, tokenizer, [request])[0] == tokens
        ids = torch.tensor([request.prompt_ids])
        reference = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        expected = [t for t in reference[0, ids.shape[1] :].tolist() if t != tokenizer.eos_token_id]
        assert tokens == expected[: len(tokens)]
        assert len(tokens) == 24 or expected[len(tokens) : len(tokens) + 1] == []


def test_seeded_sampling_is_reproducible_and_batch_independent(zh):
    model, tokenizer = zh
    requests = [
        GenerationRequest(
            tokenizer(p, add_special_tokens=False)["input_ids"],
            max_tokens=16,
            temperature=0.9,
            top_p=0.9,
            top_k=50,
            seed=11 + i,
        )
        for i, p in enumerate(PROMPTS)
    ]
    batched = decode_all(model, tokenizer, requests)
    assert batched == [decode_all(model, tokenizer, [r])[0] for r in requests]
    assert batched == decode_all(model, tokenizer, requests)


def test_top_k_one_is_greedy(zh):
    model, tokenizer = zh
    sampled = decode_all(
        model,
        tokenizer,
        [GenerationRequest(greedy(tokenizer, "经济").prompt_ids, max_tokens=12, temperature=1.0, top_k=1, seed=3)],
    )
    assert sampled == decode_all(model, tokenizer, [greedy(tokenizer, "经济", n=12)])


def test_stream_never_emits_broken_utf8_and_concatenates_to_the_text(zh):
    model, tokenizer = zh
    tokens = decode_all(model, tokenizer, [greedy(tokenizer, "中国人民", n=40)])[0]
    stream = TextStream(tokenizer, [])
    pieces = [stream.push(t) for t in tokens] + [stream.close()]
    # an incomplete character cut off by max_tokens is dropped at the end, never sent as U+FFFD
    assert "".join(pieces) == tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")
    assert all("\ufffd" not in p for p in pieces)
    held = sum(1 for p in pieces[:-1] if p == "")
    assert held > 0  # characters spanning several byte tokens were held until complete
    assert any(ord(c) > 0x4E00 for c in "".join(pieces))


def test_stop_sequence_cuts_the_text_and_is_never_emitted(zh):
    model, tokenizer = zh
    tokens = decode_all(model, tokenizer, [greedy(tokenizer, "中国人民", n=40)])[0]
    full = tokenizer.decode(tokens)
    stop = full[5:7]
    stream = TextStream(tokenizer, [stop, "never-there"])
    out = "".join(stream.push(t) for t in tokens) + stream.close()
    assert stream.stopped and out == full[: full.find(stop)] and stop not in out


def test_rows_joining_and_leaving_a_running_batch_decode_as_if_alone(zh):
    """Continuous batching: requests join between steps (prefilled inside the next decode step; some prompts longer
    than the running rows, some shorter) and finished rows leave; every row's tokens equal its solo decode."""
    model, tokenizer = zh
    requests = [greedy(tokenizer, p, n=6 + 5 * i) for i, p in enumerate(PROMPTS)]
    requests.append(GenerationRequest(greedy(tokenizer, "发展").prompt_ids, max_tokens=20, temperature=0.8, seed=5))
    alone = [decode_all(model, tokenizer, [r])[0] for r in requests]
    generator = BatchGenerator(model, requests[:2], tokenizer.eos_token_id, tokenizer.eos_token_id)
    outputs = {id(r): [] for r in requests}
    pending, step, widest = list(requests[2:]), 0, 0
    while generator.active or pending:
        if pending and step % 3 == 2:
            generator.add([pending.pop(0)])
        widest = max(widest, len(generator.rows))
        for row, token in zip(generator.rows, generator.step(), strict=False):
            if token is not None:
                outputs[id(row.request)].append(token)
        generator.compact()
        cached = [r for r in generator.rows if r.prefilled]
        if cached:  # every real token is in the cache exactly once, and no dead leading padding is kept
            assert generator.mask.sum(dim=1).tolist() == [len(r.request.prompt_ids) + r.generated for r in cached]
            assert bool(generator.mask[:, 0].any())
            assert generator.cache.layers[0].keys.shape[:3:2] == (len(cached), generator.mask.shape[1])
        step += 1
    assert [outputs[id(r)] for r in requests] == alone
    assert widest >= 3 and generator.rows == [] and generator.cache is None


def test_ignore_eos_decodes_to_max_tokens_past_eos():
    eos = 7
    logits = torch.zeros(10)
    logits[eos] = 1.0  # the model wants to stop at once
    stops, keeps = (Row(GenerationRequest([1], max_tokens=3, temperature=0, ignore_eos=f), None) for f in (False, True))
    stops.prefilled = keeps.prefilled = True
    assert advance_row(stops, logits, eos) is None and stops.done and stops.generated == 1
    assert [advance_row(keeps, logits, eos) for _ in range(3)] == [eos, eos, eos] and keeps.done


def test_tiny_temperatures_decode_greedily_and_a_bad_row_fails_alone():
    logits = torch.tensor([0.0, 3.0, 1.0])
    tiny = Row(GenerationRequest([1], max_tokens=4, temperature=1e-40, seed=1), torch.Generator().manual_seed(1))
    tiny.prefilled = True
    assert advance_row(tiny, logits, eos_id=None) == 1  # 3 / 1e-40 would be inf: greedy instead
    broken = Row(GenerationRequest([1], max_tokens=4, temperature=1.0), torch.Generator().manual_seed(1))
    broken.prefilled = True
    assert advance_row(broken, torch.tensor([float("nan")] * 3), eos_id=None) is None
    assert broken.done and isinstance(broken.error, RuntimeError)


def test_cache_width_stays_bounded_under_churn(zh):
    """A long request beside a stream of short requests with long prompts: each join pads the running rows mid-way,
    so without repacking the cache would grow by a prompt's width per join; every row still decodes as if alone."""
    from minigpt_ray.serving.generation import REPACK_SLACK

    model, tokenizer = zh
    long_prompt = tokenizer.decode(greedy(tokenizer, "在北京举行的会议上，" * 2).prompt_ids)
    anchor = greedy(tokenizer, "经济", n=40, ignore_eos=True)
    churn = [greedy(tokenizer, long_prompt, n=2, ignore_eos=True) for _ in range(12)]
    generator = BatchGenerator(model, [anchor], tokenizer.eos_token_id, tokenizer.eos_token_id)
    outputs = {id(r): [] for r in [anchor, *churn]}
    pending, widest = list(churn), 0
    while generator.active:
        if pending:
            generator.add([pending.pop(0)])
        for row, token in zip(generator.rows, generator.step(), strict=True):
            if token is not None:
                outputs[id(row.request)].append(token)
        generator.compact()
        if generator.mask is not None:
            longest = int(generator.mask.sum(dim=1).max())
            assert generator.mask.shape[1] <= longest + REPACK_SLACK
            widest = max(widest, generator.mask.shape[1])
    joins = len(churn) * len(churn[0].prompt_ids)
    assert widest < len(anchor.prompt_ids) + 40 + REPACK_SLACK < joins  # bounded, far below the sum of the joins
    assert outputs[id(anchor)] == decode_all(model, tokenizer, [anchor])[0]
    assert all(outputs[id(r)] == decode_all(model, tokenizer, [r])[0] for r in churn[:3])
