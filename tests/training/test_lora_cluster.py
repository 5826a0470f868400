"""LoRA fine-tuning as a Ray Train + DeepSpeed job (ZeRO-2 and ZeRO-3): only the adapters train, and the export
writes a peft adapter and a merged model that equals base + adapter."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_run_config
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from minigpt_ray.modeling.lora import LoraSpec, trainable_parameters, with_lora
from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.training.trainer import run_training

IDS = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_lora_trains_only_adapters_and_exports_adapter_and_merged_model(
    ray_cluster, tiny_trained, tmp_path, zero_stage
):
    cfg = tiny_run_config(tmp_path / "lora", zero_stage=zero_stage, max_steps=12, eval_every=12, checkpoint_every=12)
    cfg.model.name, cfg.train.lr = tiny_trained["dir"], 1e-2
    cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.dropout = 4, 8.0, 0.0
    metrics = run_training(cfg.validate())
    base = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"]).eval()
    fresh = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"])
    expected = trainable_parameters(with_lora(fresh, LoraSpec(4, 8.0, 0.0, ("all-linear",)))[1])
    assert metrics["trainable_params"] == expected < 0.1 * metrics["params"] and metrics["lora_r"] == 4
    assert metrics["final_val_loss"] < metrics["initial_val_loss"]
    adapter_dir, model_dir = tmp_path / "lora" / "adapter", tmp_path / "lora" / "model"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == tiny_trained["dir"]
    merged = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=IDS).logits, with_adapter(input_ids=IDS).logits, rtol=1e-4, atol=1e-4
        )
    # The merged weight is the untouched base weight plus the adapter's update: nothing else trained.
    adapter = load_file(str(adapter_dir / "adapter_model.safetensors"))
    a = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    original = AutoModelForCausalLM.from_pretrained(tiny_trained["dir"]).model.layers[0].self_attn.q_proj.weight
    update = (8.0 / 4) * b @ a
    assert update.abs().max() > 1e-4  # the adapter learned something
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, original.detach() + update)
    torch.testing.assert_close(merged.model.embed_tokens.weight, original.new_tensor(base.model.embed_tokens.weight))
    if zero_stage == 2:
        check_adapter_served(adapter_dir, merged, load_tokenizer(str(model_dir)))


def check_adapter_served(adapter_dir, merged, tokenizer) -> None:
    """Serving base + adapter directly: the adapter directory answers as the merged model does."""
    import requests
    from ray import serve

    from minigpt_ray.cluster import free_port
    from minigpt_ray.compress.artifact import load_model_dir
    from minigpt_ray.config import ServeJobConfig
    from minigpt_ray.serving.app import deploy

    with torch.no_grad():
        torch.testing.assert_close(load_model_dir(adapter_dir)[0](input_ids=IDS).logits, merged(input_ids=IDS).logits)
    ids = tokenizer("ROMEO:", return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = merged.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    url = deploy(ServeJobConfig(model=str(adapter_dir), port=free_port()).validate())
    try:
        body = {"prompt": "ROMEO:", "max_tokens": 6, "temperature": 0}
        reply = requests.post(f"{url}/v1/completions", json=body, timeout=120).json()
        assert reply["choices"][0]["text"] == expected
    finally:
        serve.shutdown()
