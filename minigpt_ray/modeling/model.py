"""Models: a family of Llama-style mini GPTs built from config (random init = pretraining), or any HF causal LM
directory / hub id through AutoModelForCausalLM.from_pretrained (GPT-2 included). Plain transformers, no Ray.
`minigpt_ray.modeling.source` resolves what a model name refers to; this module builds and measures models."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, PreTrainedModel

from minigpt_ray.config import ConfigError

# Llama-style: RMSNorm, rotary positions, SwiGLU MLP, tied embeddings (most of a mini model is its embedding).
PRESETS: dict[str, dict] = {
    "gpt-nano": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384, vocab_size=4096
    ),
    "gpt-micro": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768, vocab_size=8192
    ),
    "gpt-mini": dict(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1024, vocab_size=8192
    ),
    "gpt-small": dict(
        hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=1536, vocab_size=16384
    ),
}


def is_preset(name: str) -> bool:
    return name in PRESETS


def preset_config(name: str, vocab_size: int, max_positions: int, eos_token_id: int) -> LlamaConfig:
    if name not in PRESETS:
        raise ConfigError(f"model.name: unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    params = dict(PRESETS[name])
    params["vocab_size"] = vocab_size or params["vocab_size"]
    return LlamaConfig(
        **params,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        rms_norm_eps=1e-5,
    )


def preset_vocab_size(name: str, override: int) -> int:
    if name not in PRESETS:
        raise ConfigError(f"model.name: unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    return override or PRESETS[name]["vocab_size"]


def cpu_has_native_bf16() -> bool:
    """The CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX). Without it torch emulates bf16 matmuls, measured at
    under 1% of fp32's speed on an AVX2-only CPU (docs/benchmarks.md), so bf16 is chosen only where this holds."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def attention_for(device_type: str) -> str:
    """CPU: eager (matmul) attention; torch's CPU flash-attention backward in bf16 is slower than the matmuls it
    replaces at these block sizes. GPU: sdpa."""
    return "eager" if device_type == "cpu" else "sdpa"


@dataclass(frozen=True)
class ModelBuildSpec:
    """What a worker needs to build the model it trains (it crosses the Ray boundary: plain values only)."""

    preset_config: dict | None
    """LlamaConfig.to_dict() of a preset (random init), or None to load `pretrained`."""
    pretrained: str | None
    """Absolute model directory, hub id or named base for from_pretrained (a worker's working directory is not the
    driver's; a named base is converted into the worker's own node's cache)."""
    gradient_checkpointing: bool
    seed: int
    """Seed of a preset's random init."""


def build_model(spec: ModelBuildSpec, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """An fp32 model on the CPU: a preset initialised from `spec.seed`, or the pretrained weights."""
    if spec.preset_config is not None:
        torch.manual_seed(spec.seed)
        config = LlamaConfig.from_dict(spec.preset_config)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn_implementation)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            local_model_dir(spec.pretrained),
            dtype=torch.float32,
            trust_remote_code=False,
            attn_implementation=attn_implementation,
        )
    if spec.gradient_checkpointing:
        model.activation_checkpointing_enable()
        model.config.use_cache = False
    return model


def local_model_dir(name: str) -> str:
    """A directory or hub id as it is; a named base as its converted directory on this node."""
    from minigpt_ray.modeling.bases import is_base, materialize_base

    return str(materialize_base(name)) if is_base(name) else name


def max_positions(config: PretrainedConfig) -> int:
    """Positions a model has (absolute embeddings fail past them, RoPE degrades); 0 when the config does not say."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 0


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once; ZeRO-3-partitioned ones by their full size)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(config: PretrainedConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N for the matmuls plus 12·layers·hidden·seq for attention (PaLM appendix B)."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    return 6.0 * n_params + 12.0 * layers * hidden * seq_len


@dataclass(frozen=True)
class SampleSpec:
    """A seeded top-k sample of token ids: what a training run's rank 0 draws from the final model while the weights
    are in memory (the driver only decodes it). Sampling rather than greedy: greedy decoding of a small model
    collapses into one repeated token."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    seed: int = 0
    temperature: float = 0.8
    top_k: int = 40
    pad_token_id: int | None = None
    eos_token_id: int | None = None

    @classmethod
    def for_prompt(cls, tokenizer, prompt: str, max_new_tokens: int, seed: int = 0, **settings) -> SampleSpec:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id
        if bos is not None and bos != tokenizer.eos_token_id and tokenizer("a")["input_ids"][:1] == [bos]:
            ids = [bos, *ids]  # a model that always starts with BOS (Gemma) degrades without it
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        return cls(tuple(ids), max_new_tokens, seed, pad_token_id=pad, eos_token_id=eos, **settings)


@torch.no_grad()
def sample_ids(model: PreTrainedModel, spec: SampleSpec) -> list[int]:
    """The new token ids of `spec`'s sample (the same ids for the same model and seed), without the prompt."""
    model.eval()
    ids = torch.tensor([spec.prompt_ids], dtype=torch.long)
    torch.manual_seed(spec.seed)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=spec.max_new_tokens,
        do_sample=True,
        temperature=spec.temperature,
        top_k=spec.top_k,
        pad_token_id=spec.pad_token_id,
        eos_token_id=spec.eos_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


def sample_text(
    model: PreTrainedModel,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 0.8,
    top_k: int = 40,
) -> str:
    """A seeded top-k sample continuing `prompt` (the same text for the same model and seed), without the prompt."""
    spec = SampleSpec.for_prompt(tokenizer, prompt, max_new_tokens, seed, temperature=temperature, top_k=top_k)
    return tokenizer.decode(sample_ids(model, spec), skip_special_tokens=True)
