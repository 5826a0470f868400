"""Save and load compressed candidates: one directory each, whose bytes on disk are the real size.

Formats (`manifest.json` "format"):
- dense: `save_pretrained` safetensors — the uncompressed and the structured-pruned models; loads with
  `AutoModelForCausalLM.from_pretrained(dir)` as well as with `load_candidate`.
- sparse: each pruned weight stored as a packed keep-bitmask (1 bit per weight) plus its kept values, so 50%
  sparsity really takes ~0.53x the bytes of the dense weight; rebuilt to dense tensors at load.
- int8-weight / int8-dynamic: torchao tensor subclasses flattened with torchao's safetensors support (the same
  encoding transformers writes for TorchAoConfig models) into `model.safetensors` + its metadata; for architectures
  built from nn.Linear (Llama-style) config.json also carries the TorchAoConfig `quantization_config`, so
  `AutoModelForCausalLM.from_pretrained(dir)` loads them as well (same logits as `load_candidate`).
- int4-weight: the packed codes and fp16 scales/offsets of `Int4GroupLinear` in `model.safetensors`.
Non-dense formats load with `minigpt_ray.compress.load_candidate(dir)`, which builds the architecture from
`config.json` and then loads the tensors. Directories are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from minigpt_ray.compress.layers import conv1d_to_linear, target_layers
from minigpt_ray.compress.quantize import int4_shells, torchao_config
from minigpt_ray.modeling.lora import is_adapter_dir, load_adapter_model
from minigpt_ray.modeling.model import local_model_dir
from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.outputs import atomic_directory

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMATS = ("dense", "sparse", "int8-weight", "int8-dynamic", "int4-weight")


def _plain_state(model) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without duplicate storage (tied embeddings): {name: tensor}, {alias: name}."""
    state, aliases, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape)) if type(tensor) is torch.Tensor else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        state[name] = tensor.detach().contiguous() if type(tensor) is torch.Tensor else tensor
    return state, aliases


def _sparse_encode(model, state: dict) -> dict[str, list[int]]:
    shapes = {}
    for name in target_layers(model):
        key = f"{name}.weight"
        dense = state.pop(key)
        keep = dense != 0
        state[f"{key}.keep_bits"] = torch.from_numpy(np.packbits(keep.numpy().reshape(-1)))
        state[f"{key}.values"] = dense[keep].contiguous()
        shapes[key] = list(dense.shape)
    return shapes


def _sparse_decode(tensors: dict, shapes: dict[str, list[int]]) -> None:
    for key, shape in shapes.items():
        numel = int(np.prod(shape))
        keep = torch.from_numpy(np.unpackbits(tensors.pop(f"{key}.keep_bits").numpy())[:numel].astype(bool))
        values = tensors.pop(f"{key}.values")
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[keep] = values
        tensors[key] = dense.reshape(shape)


def hf_quantization_config(config, fmt: str) -> dict | None:
    """transformers' `quantization_config` (TorchAoConfig) for an int8 candidate, so that plain
    `AutoModelForCausalLM.from_pretrained(dir)` loads it too. None when the architecture's target layers are not
    nn.Linear (GPT-2's Conv1D: we convert them before quantizing, which transformers' GPT-2 class cannot mirror)."""
    from torch import nn
    from transformers import TorchAoConfig

    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config)
    quantized = set(target_layers(fresh))
    linears = {name for name, module in fresh.named_modules() if isinstance(module, nn.Linear)}
    if not quantized <= linears:
        return None
    return TorchAoConfig(torchao_config(fmt), modules_to_not_convert=sorted(linears - quantized)).to_dict()


def save_candidate(model, tokenizer, directory: str | Path, fmt: str, manifest: dict) -> Path:
    """Write the candidate atomically; `manifest` (settings, metrics) is stored beside the weights."""
    if fmt not in FORMATS:
        raise ValueError(f"format: unknown {fmt!r} (one of {', '.join(FORMATS)})")
    with atomic_directory(directory) as tmp:
        tokenizer.save_pretrained(tmp)
        extra = {}
        if fmt == "dense":
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.config.save_pretrained(tmp)
            state, aliases = _plain_state(model)
            extra["aliases"] = aliases
            metadata = None
            if fmt == "sparse":
                extra["sparse_shapes"] = _sparse_encode(model, state)
            elif fmt.startswith("int8"):
                from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

                state, metadata = flatten_tensor_state_dict(state)
                _add_to_config(Path(tmp), "quantization_config", hf_quantization_config(model.config, fmt))
            save_file(state, str(Path(tmp) / WEIGHTS), metadata=metadata)
        record = {**manifest, "format": fmt, **extra}
        (Path(tmp) / MANIFEST).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(directory)


def _add_to_config(directory: Path, key: str, value) -> None:
    if value is not None:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        (directory / "config.json").write_text(json.dumps(config | {key: value}, indent=2) + "\n", encoding="utf-8")


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a candidate directory (no {MANIFEST})")
    return json.loads(path.read_text(encoding="utf-8"))


def load_candidate(directory: str | Path):
    """(model in eval mode, tokenizer, manifest) for any candidate directory."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    fmt = manifest["format"]
    tokenizer = load_tokenizer(str(directory))
    if fmt == "dense":
        hf_logging.disable_progress_bar()
        model = AutoModelForCausalLM.from_pretrained(directory)
        return model.eval(), tokenizer, manifest
    with safe_open(str(directory / WEIGHTS), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
        metadata = handle.metadata()
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    if fmt == "sparse":
        _sparse_decode(tensors, manifest["sparse_shapes"])
    else:
        conv1d_to_linear(model)
    if fmt == "int4-weight":
        int4_shells(model, manifest["candidate"]["group_size"])
    if fmt.startswith("int8"):
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

        tensors, leftover = unflatten_tensor_state_dict(tensors, metadata)
        tensors |= leftover
    for alias, name in manifest.get("aliases", {}).items():
        tensors[alias] = tensors[name]
    model.load_state_dict(tensors, strict=True, assign=True)
    model.tie_weights()
    return model.eval(), tokenizer, manifest


def load_model_dir(directory: str | Path):
    """(model, tokenizer) for a sweep candidate of any format, a plain HF model directory or a LoRA adapter
    directory (its base model with the adapter merged in), or a named base (its converted directory)."""
    directory = local_model_dir(str(directory))
    if is_adapter_dir(directory):
        return load_adapter_model(directory), load_tokenizer(str(directory))
    if (Path(directory) / MANIFEST).is_file():
        model, tokenizer, _ = load_candidate(directory)
        return model, tokenizer
    return AutoModelForCausalLM.from_pretrained(directory).eval(), load_tokenizer(str(directory))


def artifact_bytes(directory: str | Path) -> dict[str, int]:
    """Bytes on disk: the weight files, and the whole directory (config, tokenizer, manifest included)."""
    files = [p for p in Path(directory).rglob("*") if p.is_file()]
    return {
        "weights": sum(p.stat().st_size for p in files if p.suffix == ".safetensors"),
        "total": sum(p.stat().st_size for p in files),
    }


def linear_weight_bytes(directory: str | Path, layer_names) -> int:
    """Bytes in the weight file that belong to the given layers' weights (codes, scales, masks, values; no bias)."""
    prefixes = tuple(f"{name}." for name in layer_names)
    total = 0
    with safe_open(str(Path(directory) / WEIGHTS), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
            if prefixes and key.startswith(prefixes) and not key.endswith(".bias"):
                tensor = handle.get_tensor(key)
                total += tensor.numel() * tensor.element_size()
    return total
