import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from minigpt_ray.config import ConfigError
from minigpt_ray.modeling.model import PRESETS, build_model, count_parameters, preset_config
from minigpt_ray.modeling.source import resolve_model
from minigpt_ray.modeling.tokenizer import save_tokenizer, train_bpe


def _build(name: str, config, checkpointing: bool = False):
    return build_model(resolve_model(name).build_spec(config, checkpointing, seed=0))


def test_presets_span_1m_to_30m_params():
    counts = {}
    for name in PRESETS:
        counts[name] = count_parameters(_build(name, preset_config(name, 0, 256, eos_token_id=0)))
    assert 0.8e6 < min(counts.values()) < 2e6
    assert 25e6 < max(counts.values()) < 40e6
    assert list(counts.values()) == sorted(counts.values())


def test_preset_is_llama_style_with_linear_layers():
    model = _build("gpt-nano", preset_config("gpt-nano", 300, 32, 0), checkpointing=True)
    assert model.config.model_type == "llama"
    assert any(isinstance(m, torch.nn.Linear) for m in model.modules())
    out = model(input_ids=torch.randint(0, 300, (2, 16)), labels=torch.randint(0, 300, (2, 16)))
    assert out.logits.shape == (2, 16, 300) and torch.isfinite(out.loss)


def test_unknown_preset_and_missing_dirs(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.name: .*directory does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"^model.name: .*has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^model.name: unknown model 'gpt-nanoo' \(did you mean gpt-nano\?"):
        resolve_model("gpt-nanoo")
    with pytest.raises(ConfigError, match=r"did you mean smollm2-135m-instruct\? bases: smollm2-135m-instruct, "):
        resolve_model("smollm2-135m")
    with pytest.raises(ConfigError, match=r"^model: gpt-nano is a preset"):
        resolve_model("gpt-nano", field="model", presets=False)
    with pytest.raises(ConfigError, match=r"^model.name: unknown preset"):
        preset_config("gpt-huge", 0, 64, 0)


def test_gpt2_checkpoint_resolves_once_and_loads_through_from_pretrained(tmp_path, monkeypatch):
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=300, n_positions=64)).save_pretrained(
        tmp_path
    )
    with pytest.raises(ConfigError, match=r"^model.name: .* has no tokenizer \(tokenizer.json"):
        resolve_model(str(tmp_path))  # found before any worker starts, not when one loads it
    save_tokenizer(train_bpe(["some text to learn a few merges from"] * 20, 300), tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    source = resolve_model(tmp_path.name)  # a relative directory: workers get its absolute path
    assert not source.is_preset and source.location == str(tmp_path) and source.max_positions == 64
    with pytest.raises(ConfigError, match=r"^data.block_size: 128 exceeds the 64 positions"):
        source.check_block_size(128)
    model = build_model(source.build_spec(None, False, seed=0))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 300, (1, 10))
    assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_a_model_directory_without_weights_is_refused_up_front(tmp_path):
    GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=300).save_pretrained(tmp_path)  # config.json only
    with pytest.raises(ConfigError, match=r"^model.name: .* has no weights \(no \*.safetensors"):
        resolve_model(str(tmp_path))
