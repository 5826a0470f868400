import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from minigpt_ray.config import ConfigError
from minigpt_ray.model import PRESETS, build_model, check_pretrained, count_parameters, model_spec, preset_config


def test_presets_span_1m_to_30m_params():
    counts = {}
    for name in PRESETS:
        config = preset_config(name, 0, 256, eos_token_id=0)
        counts[name] = count_parameters(build_model(model_spec(name, config, False, 0)))
    assert 0.8e6 < min(counts.values()) < 2e6
    assert 25e6 < max(counts.values()) < 40e6
    assert list(counts.values()) == sorted(counts.values())


def test_preset_is_llama_style_with_linear_layers():
    model = build_model(model_spec("gpt-nano", preset_config("gpt-nano", 300, 32, 0), True, 0))
    assert model.config.model_type == "llama"
    assert any(isinstance(m, torch.nn.Linear) for m in model.modules())
    out = model(input_ids=torch.randint(0, 300, (2, 16)), labels=torch.randint(0, 300, (2, 16)))
    assert out.logits.shape == (2, 16, 300) and torch.isfinite(out.loss)


def test_unknown_preset_and_missing_dirs(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.name: .*directory does not exist"):
        check_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"^model.name: .*has no config.json"):
        check_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^model.name: unknown preset"):
        preset_config("gpt-huge", 0, 64, 0)


def test_gpt2_checkpoint_loads_through_from_pretrained(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=300, n_positions=64)).save_pretrained(tmp_path)
    config = check_pretrained(str(tmp_path))
    model = build_model(model_spec(str(tmp_path), config, False, 0))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 300, (1, 10))
    assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
