"""The sweep's measurements of a candidate's GGUF form in llama.cpp (real llama-cpp-python, no Ray)."""

from __future__ import annotations

import shutil

import pytest
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from minigpt_ray.export import GGUF_FILE
from minigpt_ray.export.llamacpp import GGUF_METRICS, measure_gguf
from minigpt_ray.modeling.evaluate import perplexity
from minigpt_ray.modeling.tokenizer import load_tokenizer


def test_gguf_form_is_written_and_measured_by_the_pytorch_protocol(tiny_trained, tmp_path):
    candidate = tmp_path / "candidate"
    shutil.copytree(tiny_trained["dir"], candidate)
    data = tiny_trained["data"]
    blocks = data.eval_blocks[:4]
    metrics = measure_gguf(candidate, blocks, data.prompt_ids[0].tolist(), decode_tokens=8, threads=1)
    assert set(metrics) == set(GGUF_METRICS) and metrics["gguf_type"] == "q8_0"
    assert metrics["gguf_mb"] == pytest.approx((candidate / GGUF_FILE).stat().st_size / 1e6)
    expected = perplexity(AutoModelForCausalLM.from_pretrained(candidate).eval(), blocks)
    assert metrics["gguf_perplexity"] == pytest.approx(expected, rel=0.01)  # q8_0 of the same weights
    assert metrics["gguf_decode_tokens_per_s"] > 0 and metrics["gguf_batched_tokens_per_s"] > 0


def test_a_model_without_a_gguf_form_gets_no_measurements_and_no_file(tiny_trained, tmp_path):
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=600, n_positions=64)).save_pretrained(gpt2)
    load_tokenizer(tiny_trained["dir"]).save_pretrained(gpt2)
    data = tiny_trained["data"]
    assert measure_gguf(gpt2, data.eval_blocks[:2], data.prompt_ids[0].tolist(), 4, 1) == {}
    assert not (gpt2 / GGUF_FILE).exists()
