"""GGUF export: the file other runtimes load holds our tokenizer and our weights (read back through `gguf` and
transformers' GGUF loader, independently of the writer)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from minigpt_ray import cli
from minigpt_ray.compress import CandidateSpec, load_candidate, make_candidate
from minigpt_ray.compress.quantize import Int4GroupLinear
from minigpt_ray.export import GGUF_FILE, export_gguf
from minigpt_ray.export.gguf import gguf_name, permute_rotary
from minigpt_ray.modeling.tokenizer import load_tokenizer

MIXED = ["今天天气很好，我们去公园散步吧。", "ROMEO: Good morrow, coz'n! 2026年 的 GPT", "  spaces\tand\nnewlines 。。"]


def _reload(directory):
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF_FILE, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE)


def test_token_ids_are_the_same_for_mixed_chinese_and_english(tiny_zh_model, tmp_path):
    export_gguf(tiny_zh_model["dir"], tmp_path / "zh", "f16")
    _, gguf_tokenizer = _reload(tmp_path / "zh")
    ours = load_tokenizer(tiny_zh_model["dir"])
    for text in MIXED:
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
        assert gguf_tokenizer.decode(ids) == text
    from gguf import GGUFReader

    fields = GGUFReader(str(tmp_path / "zh" / GGUF_FILE)).fields
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"):
        assert fields[key].contents() == ours.eos_token_id  # EOS separates documents; nothing else is special
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_f16_logits_equal_the_pytorch_model(tiny_trained, tmp_path):
    export_gguf(tiny_trained["dir"], tmp_path / "f16", "f16")
    reloaded, _ = _reload(tmp_path / "f16")
    original = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"]).eval()
    ids = tiny_trained["data"].eval_blocks[:2]
    with torch.no_grad():
        expected, got = original(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=2e-2 * expected.abs().max().item())
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.98


def test_q8_0_greedy_text_matches_for_32_tokens(tiny_trained, tmp_path):
    export_gguf(tiny_trained["dir"], tmp_path / "q8", "q8_0")
    reloaded, _ = _reload(tmp_path / "q8")
    original = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"]).eval()
    prompt = tiny_trained["data"].prompt_ids
    kwargs = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(reloaded.generate(prompt, **kwargs), original.generate(prompt, **kwargs))
    export_gguf(tiny_trained["dir"], tmp_path / "f32", "f32")
    ratio = (tmp_path / "q8" / GGUF_FILE).stat().st_size / (tmp_path / "f32" / GGUF_FILE).stat().st_size
    assert ratio < 0.4  # 8.5 bits per weight against 32, less the tokenizer and header


def test_int4_candidate_maps_to_q4_1_bit_for_bit(tiny_trained, tmp_path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    base = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"]).eval()
    spec = CandidateSpec(quant="int4-weight", group_size=64)  # groups of 64 become pairs of 32-weight Q4_1 blocks
    make_candidate(base, load_tokenizer(tiny_trained["dir"]), spec, tmp_path / "int4", tiny_trained["data"])
    path = export_gguf(tmp_path / "int4", tmp_path / "gguf", "auto")
    candidate, _, _ = load_candidate(tmp_path / "int4")
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    heads = {"attn_q": candidate.config.num_attention_heads, "attn_k": candidate.config.num_key_value_heads}
    checked = 0
    for name, module in candidate.named_modules():
        if not isinstance(module, Int4GroupLinear):
            continue
        stored = tensors[gguf_name(f"{name}.weight")]
        assert stored.tensor_type.name == "Q4_1"
        expected = module.dequantized_weight().numpy()
        kind = gguf_name(f"{name}.weight").split(".")[2]
        expected = permute_rotary(expected, heads[kind]) if kind in heads else expected
        values = dequantize(stored.data, stored.tensor_type).reshape(expected.shape)
        assert (values == expected).all(), name
        checked += 1
    assert checked == 2 * 7 and tensors["token_embd.weight"].tensor_type.name == "Q8_0"


def test_export_command_refuses_what_it_cannot_write(tmp_path, capsys):
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=300, n_positions=32)).save_pretrained(gpt2)
    cases = {
        ("--model", str(gpt2), "--output", str(tmp_path / "out")): "model: GGUF export supports Llama-style models",
        ("--model", str(tmp_path / "nope"), "--output", str(tmp_path / "out")): "model: directory",
        ("--model", str(gpt2), "--output", str(gpt2 / "gguf")): "output: must not be the model directory",
        ("--model", str(gpt2), "--quant", "q3_k"): "quant: must be one of",
    }
    for argv, message in cases.items():
        capsys.readouterr()
        assert cli.main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not (tmp_path / "out").exists() and not (gpt2 / "gguf").exists()


def _llama_cpp(path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False)


def test_llama_cpp_tokenizes_as_we_do(tiny_zh_model, tmp_path):
    llm = _llama_cpp(export_gguf(tiny_zh_model["dir"], tmp_path / "zh", "q8_0"))
    ours = load_tokenizer(tiny_zh_model["dir"])
    for text in MIXED:
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == ids
        assert llm.detokenize(ids).decode("utf-8") == text


def test_llama_cpp_f16_logits_and_q8_0_greedy_text_match_pytorch(tiny_trained, tmp_path):
    original = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"]).eval()
    prompt = tiny_trained["data"].prompt_ids
    ids = tiny_trained["data"].eval_blocks[0, :48].tolist()
    llm = _llama_cpp(export_gguf(tiny_trained["dir"], tmp_path / "f16", "f16"))
    llm.eval(ids)
    with torch.no_grad():
        expected = original(input_ids=torch.tensor([ids])).logits[0]
    got = torch.from_numpy(llm.scores[: len(ids)].copy())
    assert torch.allclose(got, expected, atol=2e-2 * expected.abs().max().item())
    llm = _llama_cpp(export_gguf(tiny_trained["dir"], tmp_path / "q8", "q8_0"))
    eos = original.config.eos_token_id
    kwargs = dict(max_new_tokens=32, do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=eos)
    want = original.generate(prompt, **kwargs)[0, prompt.shape[1] :].tolist()  # up to 32 tokens, EOS included
    got_tokens = []
    for token in llm.generate(prompt[0].tolist(), temp=0.0, top_k=1, reset=True):
        got_tokens.append(token)
        if len(got_tokens) == 32 or token == eos:
            break
    assert got_tokens == want


def test_a_tensor_llama_cpp_has_no_place_for_is_refused_not_dropped(tiny_trained, tmp_path):
    from helpers import tiny_llama_config

    from minigpt_ray.config import ConfigError

    tokenizer = load_tokenizer(tiny_trained["dir"])
    config = tiny_llama_config(len(tokenizer), attention_bias=True)  # q/k/v/o biases: no slot in llama.cpp's llama
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "biased")
    tokenizer.save_pretrained(tmp_path / "biased")
    with pytest.raises(
        ConfigError, match=r"^model: tensor model\.layers\.0\.self_attn\.q_proj\.bias has no counterpart"
    ):
        export_gguf(tmp_path / "biased", tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()
