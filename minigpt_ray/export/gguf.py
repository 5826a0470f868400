"""GGUF export of Llama-style models, for llama.cpp, Ollama and anything else that reads GGUF. Plain Python, no Ray.

The tensor names, the q/k row permutation and the metadata keys are those of llama.cpp's `convert_hf_to_gguf.py`
for the `llama` architecture; the tokenizer is embedded as llama.cpp's byte-level BPE (`gpt2` model, GPT-2
pre-tokenizer: the split our tokenizer uses), so llama.cpp tokenizes exactly as we do. Weights come from any model
directory the project writes (dense, sparse, int8, int4 candidates): int4 group-wise candidates map losslessly to
Q4_1 (the same asymmetric 4-bit codes with an fp16 scale and minimum, repeated per 32-weight block); every other
type is quantized from the dense weights by `gguf`'s reference quantizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minigpt_ray.compress.artifact import load_model_dir
from minigpt_ray.compress.quantize import Int4GroupLinear
from minigpt_ray.config import ConfigError
from minigpt_ray.config.export import GGUF_QUANTS
from minigpt_ray.config.serve import GGUF_FILE
from minigpt_ray.modeling.bases import LLAMA_CPP_PRE_TOKENIZERS, llama_cpp_pre_name
from minigpt_ray.outputs import atomic_directory

_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _qtype(quant: str):
    import gguf

    return {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
            "q4_1": gguf.GGMLQuantizationType.Q4_1}[quant]  # fmt: skip


_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for an HF Llama weight; a tensor llama.cpp's `llama` architecture has no place for (a bias,
    a q/k norm) is refused rather than dropped or misnamed."""
    module, _, kind = hf_name.rpartition(".")
    parts = module.split(".")
    if kind == "weight" and module in _TOP_NAMES:
        return f"{_TOP_NAMES[module]}.weight"
    if kind == "weight" and parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:])]}.weight"
    raise ConfigError(f"model: tensor {hf_name} has no counterpart in llama.cpp's llama architecture")


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF Llama keeps each head's rotary pairs as two halves; llama.cpp interleaves them (convert_hf_to_gguf)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _dense_weight(module: nn.Module) -> torch.Tensor:
    """The fp32 weight of any layer a candidate holds: plain, torchao int8, or our int4 (dequantized)."""
    weight = module.dequantized_weight() if isinstance(module, Int4GroupLinear) else module.weight
    if type(weight) not in (torch.Tensor, nn.Parameter):  # torchao int8 tensor subclasses
        weight = weight.dequantize()
    return weight.detach().float()


def int4_to_q4_1(module: Int4GroupLinear) -> np.ndarray:
    """Our int4 codes, scales and minimums re-laid as Q4_1 blocks of 32 weights, bit for bit: [out, blocks * 20]."""
    out = module.out_features
    codes = torch.stack([module.packed & 15, module.packed >> 4], dim=2).reshape(out, -1, 32).numpy()
    packed = codes[..., :16] | (codes[..., 16:] << 4)  # Q4_1: weight j and j + 16 share a byte
    per_block = module.group_size // 32
    scale = np.repeat(module.scale.numpy(), per_block, axis=1)[..., None].view(np.uint8)
    low = np.repeat(module.offset.numpy(), per_block, axis=1)[..., None].view(np.uint8)
    return np.concatenate([scale, low, packed], axis=-1).reshape(out, -1)


def _check_exportable(model) -> None:
    config = model.config
    if getattr(config, "model_type", "") != "llama":
        raise ConfigError(f"model: GGUF export supports Llama-style models, not {config.model_type!r}")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":  # the writer records plain RoPE only
        raise ConfigError(f"model: GGUF export supports plain RoPE, not rope_type {rope['rope_type']!r}")


def _add_metadata(writer, config, name: str, quant: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    file_types = gguf.LlamaFileType
    writer.add_file_type(
        {"f32": file_types.ALL_F32, "f16": file_types.MOSTLY_F16, "q8_0": file_types.MOSTLY_Q8_0,
         "q4_0": file_types.MOSTLY_Q4_0, "q4_1": file_types.MOSTLY_Q4_1}[quant]
    )  # fmt: skip
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _special_ids(tokenizer) -> set[int]:
    """Ids llama.cpp must treat as control tokens: the named special tokens and every added special token (ChatML's
    <|im_start|> / <|im_end|>), so a chat prompt's markers are parsed as one token each, as in training."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {
        index for index, token in added.items() if getattr(token, "special", False)
    }


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """The tokenizer as llama.cpp's byte-level BPE: tokens in id order (padded to the model's vocab), merges, the
    pre-tokenizer llama.cpp knows by name, special tokens marked as control tokens, and the chat template, so
    llama.cpp's (and Ollama's, LM Studio's) own chat completion formats turns as the model was tuned."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = llama_cpp_pre_name(tokenizer)
    if pre is None:
        raise ConfigError(
            f"model: its tokenizer's pre-tokenizer {json.dumps(spec.get('pre_tokenizer'))[:80]} has no llama.cpp "
            f"counterpart this exporter knows ({', '.join(LLAMA_CPP_PRE_TOKENIZERS)})"
        )
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special = _special_ids(tokenizer)
    tokens, types = [], []
    for index in range(vocab_size):
        tokens.append(by_id.get(index, f"[PAD{index}]"))
        unused = index not in by_id
        control = index in special
        types.append(gguf.TokenType.UNUSED if unused else gguf.TokenType.CONTROL if control else gguf.TokenType.NORMAL)
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_bos_token_id(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(False)  # documents are EOS-separated; nothing is prepended
    writer.add_add_eos_token(False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def _rotary_heads(name: str, config) -> int:
    """Heads whose rows llama.cpp wants re-laid (query and key projections), 0 for every other tensor."""
    if name.endswith("attn_q.weight"):
        return config.num_attention_heads
    if name.endswith("attn_k.weight"):
        return config.num_key_value_heads or config.num_attention_heads
    return 0


def _tensor(name: str, weight: torch.Tensor, quant: str, config):
    """(numpy data, raw ggml type or None) for one tensor in the requested type."""
    from gguf import quants

    data = weight.numpy()
    heads = _rotary_heads(name, config)
    if heads:
        data = permute_rotary(data, heads)
    # 1-D tensors (norm gains) stay f32, as llama.cpp's own converter keeps them.
    if data.ndim == 1 or quant == "f32":
        return data.astype(np.float32), None
    if quant == "f16":
        return data.astype(np.float16), None
    if quant in ("q4_0", "q4_1") and name in ("token_embd.weight", "output.weight"):
        quant = "q8_0"  # the (tied) output layer shapes every logit: 8 bits there, as llama.cpp's 4-bit types do
    return quants.quantize(data.astype(np.float32), _qtype(quant)), _qtype(quant)


def _weights(model) -> list[tuple[str, nn.Module]]:
    """(HF weight name, module) for every stored tensor: int4 layers keep their codes in buffers, not a `weight`;
    a tied output layer is the embedding and is not stored twice."""
    modules = dict(model.named_modules())
    names = []
    for key in model.state_dict():
        module_name, _, kind = key.rpartition(".")
        if kind in ("scale", "offset") and isinstance(modules[module_name], Int4GroupLinear):
            continue  # stored with the codes
        if module_name == "lm_head" and model.config.tie_word_embeddings:
            continue
        names.append(f"{module_name}.weight" if kind == "packed" else key)
    return [(name, modules[name.rpartition(".")[0]]) for name in names]


def _add_tensors(writer, model, quant: str) -> None:
    config = model.config
    for hf_name, module in _weights(model):
        name = gguf_name(hf_name)
        if isinstance(module, Int4GroupLinear) and quant == "q4_1":
            blocks = int4_to_q4_1(module)  # rows permuted as whole rows of blocks: still bit for bit
            heads = _rotary_heads(name, config)
            writer.add_tensor(name, permute_rotary(blocks, heads) if heads else blocks, raw_dtype=_qtype("q4_1"))
            continue
        data, raw_dtype = _tensor(name, _dense_weight(module), quant, config)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)


def resolve_quant(quant: str, model) -> str:
    if quant == "auto":
        return "q4_1" if any(isinstance(m, Int4GroupLinear) for m in model.modules()) else "q8_0"
    if quant not in GGUF_QUANTS:
        raise ConfigError(f"quant: must be one of {', '.join(GGUF_QUANTS)}, got {quant!r}")
    return quant


def write_gguf(model, tokenizer, path: str | Path, quant: str, name: str) -> str:
    """Write `model` (a loaded Llama-style model or candidate) and its tokenizer to the GGUF file `path` (not
    atomically: callers write into a staging directory). Returns the tensor type used."""
    import gguf

    _check_exportable(model)
    quant = resolve_quant(quant, model)
    with torch.no_grad():
        writer = gguf.GGUFWriter(str(path), arch="llama")
        _add_metadata(writer, model.config, name, quant)
        _add_tokenizer(writer, tokenizer, model.config.vocab_size)
        _add_tensors(writer, model, quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return quant


def export_gguf(model_dir: str | Path, output: str | Path, quant: str = "auto") -> Path:
    """Write `<output>/model.gguf` (atomically, with the tokenizer files beside it); returns the file's path."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars would bury the job's own lines
    model, tokenizer = load_model_dir(model_dir)
    _check_exportable(model)
    with atomic_directory(output) as staging:
        quant = write_gguf(model, tokenizer, Path(staging) / GGUF_FILE, quant, Path(model_dir).resolve().name)
        tokenizer.save_pretrained(staging)  # the same tokenizer for HF tools that open the directory
        (Path(staging) / "export.json").write_text(json.dumps({"source": str(model_dir), "quant": quant}) + "\n")
    return Path(output) / GGUF_FILE
