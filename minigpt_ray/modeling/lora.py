"""LoRA fine-tuning through `peft` (Hu et al. 2021): low-rank adapters beside the frozen weights of the chosen
linear layers. Plain PyTorch + peft, no Ray.

The training worker trains the HF model with the adapters injected in place (`peft.get_peft_model(...)`'s base
model), so the fused loss, torch.compile and DeepSpeed see the usual module tree and only the adapters carry
`requires_grad`. The export rebuilds the same wrapper from the gathered weights and writes both the adapter (peft's
format: `adapter_config.json` + `adapter_model.safetensors`) and the merged model, a plain HF model that every
later stage (sweep, serving, GGUF export) takes unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class LoraSpec:
    """What a worker needs to add the adapters (it crosses the Ray boundary: plain values only)."""

    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    """Module names (q_proj, ...), or ("all-linear",): every linear layer but the output head."""
    base: str = ""
    """The base model's directory or hub id, recorded in the adapter's config."""

    def peft_config(self):
        from peft import LoraConfig

        targets = "all-linear" if self.targets == ("all-linear",) else list(self.targets)
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
            base_model_name_or_path=self.base or None,
        )


def with_lora(model: torch.nn.Module, spec: LoraSpec):
    """(the PeftModel wrapper, the HF model with adapters injected in place): only adapter weights train."""
    from peft import get_peft_model

    wrapper = get_peft_model(model, spec.peft_config())
    return wrapper, wrapper.get_base_model()


def trainable_parameters(model: torch.nn.Module) -> int:
    """Parameters the optimizer updates (ZeRO-3-partitioned ones by their full size)."""
    unique = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    return sum(getattr(p, "ds_numel", p.numel()) for p in unique)


def save_lora(model_config, state_dict: dict, spec: LoraSpec, model_dir: Path, adapter_dir: Path):
    """Rebuild base + adapters on CPU from the gathered weights (strictly), write the adapter and the merged model;
    returns the merged model."""
    from transformers import AutoModelForCausalLM

    model_config.use_cache = True
    wrapper, inner = with_lora(AutoModelForCausalLM.from_config(model_config, dtype=torch.float32), spec)
    inner.load_state_dict(state_dict, strict=True)
    wrapper.save_pretrained(str(adapter_dir), safe_serialization=True)
    merged = wrapper.merge_and_unload()
    merged.save_pretrained(str(model_dir), safe_serialization=True)
    return merged


ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(directory: str | Path) -> bool:
    """A peft adapter directory (no model of its own: its base model is named in its config)."""
    return (Path(directory) / ADAPTER_CONFIG).is_file() and not (Path(directory) / "config.json").is_file()


def adapter_base(directory: str | Path) -> str:
    import json

    config = json.loads((Path(directory) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return config.get("base_model_name_or_path") or ""


def load_adapter_model(directory: str | Path):
    """Base model + the adapter, merged (for inference: one weight per layer, no adapter branch)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(adapter_base(directory), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(directory)).merge_and_unload().eval()
