"""Compression library on tiny models, no cluster: exact sparsity, N:M patterns, structured shapes, quantized
dtypes and quality, real byte savings, and save → load giving identical outputs (Llama-style and GPT-2)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama_config
from transformers import AutoModelForCausalLM, GPT2Config

from minigpt_ray.compress import (
    CandidateError,
    CandidateSpec,
    load_candidate,
    make_candidate,
    prune_structured,
    prune_unstructured,
    quantize_model,
    save_candidate,
    sparsity_of,
)
from minigpt_ray.compress.artifact import artifact_bytes, linear_weight_bytes
from minigpt_ray.compress.candidate import build_candidate, check_fits_model, recover
from minigpt_ray.compress.layers import target_layers, weight_rows
from minigpt_ray.compress.quantize import Int4GroupLinear
from minigpt_ray.modeling.evaluate import perplexity
from minigpt_ray.modeling.tokenizer import load_tokenizer

X = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(1))


def tiny(arch: str):
    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=320, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    else:
        config = tiny_llama_config(320)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def trained(tiny_trained):
    model = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"]).eval()
    return model, load_tokenizer(tiny_trained["dir"]), tiny_trained["data"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_magnitude_per_layer_reaches_exact_sparsity_in_every_layer(arch):
    model = tiny(arch)
    prune_unstructured(model, "magnitude", 0.37)
    for name, layer in target_layers(model).items():
        w = weight_rows(layer)
        assert int((w == 0).sum()) == round(0.37 * w.numel()), name


def test_global_magnitude_hits_exact_total_and_differs_per_layer():
    model = tiny("llama")
    prune_unstructured(model, "magnitude-global", 0.5)
    layers = target_layers(model).values()
    zeros = sum(int((weight_rows(m) == 0).sum()) for m in layers)
    total = sum(weight_rows(m).numel() for m in layers)
    assert zeros == round(0.5 * total)
    per_layer = {round(float((weight_rows(m) == 0).float().mean()), 3) for m in layers}
    assert len(per_layer) > 1  # one global threshold, not the same fraction everywhere


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_wanda_prunes_the_exact_count_in_every_output_row(arch):
    model = tiny(arch)
    prune_unstructured(model, "wanda", 0.5, calib_blocks=X)
    for layer in target_layers(model).values():
        w = weight_rows(layer)
        assert torch.all((w == 0).sum(dim=1) == round(0.5 * w.shape[1]))


def test_wanda_uses_activations_not_only_magnitude():
    a, b = tiny("llama"), tiny("llama")
    masks_wanda = prune_unstructured(a, "wanda", 0.5, calib_blocks=X)
    masks_mag = prune_unstructured(b, "magnitude", 0.5)
    assert any(not torch.equal(masks_wanda[k], masks_mag[k]) for k in masks_wanda)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_n_m_pattern_holds_in_every_group(arch, pattern, method):
    n, m = map(int, pattern.split(":"))
    model = tiny(arch)
    prune_unstructured(model, method, 0.0, pattern, calib_blocks=X)
    for layer in target_layers(model).values():
        w = weight_rows(layer)
        nonzero = (w != 0).reshape(w.shape[0], -1, m).sum(dim=2)
        assert torch.all(nonzero <= n)
        assert int(nonzero.sum()) >= 0.99 * w.numel() * n / m  # pruned to the pattern, not beyond
    assert sparsity_of(model) == pytest.approx(1 - n / m, abs=0.01)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_structured_pruning_gives_smaller_shapes_that_run_and_reload(arch, tmp_path):
    model = tiny(arch)
    before = sum(p.numel() for p in model.parameters())
    summary = prune_structured(model, 0.5, calib_blocks=X)
    assert summary["ffn"][1] < summary["ffn"][0]
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.8 * before
    if arch == "llama":
        assert model.config.intermediate_size == 64 and model.config.num_attention_heads == 2
        assert model.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    else:
        assert model.config.n_inner == 128 and model.transformer.h[0].mlp.c_fc.weight.shape == (64, 128)
    logits = model(input_ids=X).logits
    assert torch.isfinite(logits).all()
    save_candidate(model, load_tokenizer_stub(), tmp_path / "c", "dense", {})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "c").eval()  # a standard HF directory
    assert torch.equal(reloaded(input_ids=X).logits, logits)


def load_tokenizer_stub():
    from minigpt_ray.modeling.tokenizer import train_bpe

    return train_bpe(["tiny text for a tokenizer 今天天气"] * 20, 300)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "setting", ["dense", "magnitude", "nm", "structured", "int8-weight", "int8-dynamic", "int4-weight"]
)
def test_save_then_load_gives_identical_outputs(arch, setting, tmp_path):
    spec = {
        "dense": CandidateSpec(),
        "magnitude": CandidateSpec("magnitude", 0.5),
        "nm": CandidateSpec("wanda", 0, "2:4"),
        "structured": CandidateSpec("structured", 0.25),
        "int8-weight": CandidateSpec(quant="int8-weight"),
        "int8-dynamic": CandidateSpec(quant="int8-dynamic"),
        "int4-weight": CandidateSpec(quant="int4-weight", group_size=32),
    }[setting].normalized()
    model, fmt, _ = build_candidate(tiny(arch), spec, X, X, seed=0)
    with torch.no_grad():
        expected = model(input_ids=X).logits
    save_candidate(model, load_tokenizer_stub(), tmp_path / "c", fmt, {"candidate": {"group_size": spec.group_size}})
    reloaded, _, manifest = load_candidate(tmp_path / "c")
    assert manifest["format"] == fmt
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=X).logits, expected)
    if fmt.startswith("int8") and arch == "llama":  # transformers' own TorchAoConfig loading path
        from torchao.quantization import Int8Tensor

        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "c").eval()
        assert isinstance(hf.model.layers[0].mlp.up_proj.weight, Int8Tensor)
        with torch.no_grad():
            assert torch.equal(hf(input_ids=X).logits, expected)


def test_quantized_weights_are_int8_and_packed_int4():
    int8 = quantize_model(tiny("gpt2"), "int8-weight")  # GPT-2 Conv1D layers are converted, then quantized
    layer = int8.transformer.h[0].mlp.c_fc
    assert isinstance(layer, torch.nn.Linear) and layer.weight.qdata.dtype == torch.int8
    int4 = quantize_model(tiny("llama"), "int4-weight", 32)
    q = int4.model.layers[0].mlp.up_proj
    assert isinstance(q, Int4GroupLinear) and q.packed.dtype == torch.uint8
    assert q.packed.shape == (128, 32)  # two 4-bit codes per byte
    assert q.scale.shape == (128, 2)  # one scale per group of 32 inputs


def test_quantized_perplexity_stays_close_and_bytes_shrink(trained, tmp_path):
    model, tokenizer, data = trained
    base = make_candidate(model, tokenizer, CandidateSpec(), tmp_path / "base", data)
    int8 = make_candidate(model, tokenizer, CandidateSpec(quant="int8-weight"), tmp_path / "int8", data)
    dyn = make_candidate(model, tokenizer, CandidateSpec(quant="int8-dynamic"), tmp_path / "dyn", data)
    int4 = make_candidate(model, tokenizer, CandidateSpec(quant="int4-weight", group_size=32), tmp_path / "int4", data)
    sparse = make_candidate(model, tokenizer, CandidateSpec("magnitude", 0.5), tmp_path / "sparse", data)
    assert base["perplexity"] < 200  # the model did learn something, so closeness means something
    assert int8["perplexity"] <= 1.01 * base["perplexity"]
    assert dyn["perplexity"] <= 1.03 * base["perplexity"]
    assert int4["perplexity"] <= 1.08 * base["perplexity"]
    assert int8["linear_bytes"] <= 0.30 * base["linear_bytes"]
    assert int4["linear_bytes"] <= 0.18 * base["linear_bytes"]
    assert sparse["linear_bytes"] <= 0.55 * base["linear_bytes"]  # bitmask + kept values, not zeros
    for m in (int8, dyn, int4, sparse):
        assert m["weights_bytes"] < base["weights_bytes"]
    assert artifact_bytes(tmp_path / "int4")["weights"] == int4["weights_bytes"]


def test_reloaded_perplexity_equals_measured(trained, tmp_path):
    model, tokenizer, data = trained
    metrics = make_candidate(model, tokenizer, CandidateSpec("wanda", 0.3, quant="int8-weight"), tmp_path / "c", data)
    reloaded, _, manifest = load_candidate(tmp_path / "c")
    assert perplexity(reloaded, data.eval_blocks) == metrics["perplexity"] == manifest["metrics"]["perplexity"]
    names = list(target_layers(model))
    assert linear_weight_bytes(tmp_path / "c", names) == metrics["linear_bytes"]


def test_recovery_keeps_the_mask_and_lowers_the_loss(trained):
    model, _, data = trained
    import copy

    pruned = copy.deepcopy(model)
    masks = prune_unstructured(pruned, "magnitude", 0.6)
    before = perplexity(pruned, data.eval_blocks)
    losses = recover(pruned, masks, data.train_blocks, steps=30, lr=1e-3)
    assert sparsity_of(pruned) == pytest.approx(0.6, abs=1e-3)
    assert perplexity(pruned, data.eval_blocks) < before
    assert len(losses) == 30


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"sparsity": 1.0, "method": "magnitude"}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"method": "random"}, "method"),
        ({"quant": "int3"}, "quant"),
        ({"quant": "int4-weight", "group_size": 48}, "group_size"),
        ({"pattern": "4:2", "method": "magnitude"}, "pattern"),
        ({"pattern": "two:four"}, "pattern"),
        ({"recovery_steps": -1}, "recovery_steps"),
    ],
)
def test_bad_candidate_settings_name_the_field(kwargs, field):
    with pytest.raises(CandidateError, match=rf"^{field}: "):
        CandidateSpec(**kwargs).normalized()


def test_settings_that_do_not_apply_are_normalized_away():
    assert CandidateSpec("none", 0.5, "2:4", "int8-weight", 32, 10).normalized() == CandidateSpec(quant="int8-weight")
    assert CandidateSpec("wanda", 0.1, "2:4").normalized().sparsity == 0.5
    assert CandidateSpec("structured", 0.5, "2:4").normalized().pattern == "unstructured"


def test_group_size_must_divide_every_layer():
    model = tiny("llama")  # in_features 64 and 128
    with pytest.raises(CandidateError, match=r"^group_size: 256 does not divide"):
        check_fits_model(CandidateSpec(quant="int4-weight", group_size=256).normalized(), model)
