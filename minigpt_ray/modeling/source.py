"""What a model name refers to, resolved once before anything runs: a preset (random init, its tokenizer trained
for the run), a named base (a pretrained model a registry package ships: `minigpt_ray.modeling.bases`) or an HF
model directory / hub id (config, tokenizer and context length read from it). Training,
the sweep and serving all start from a `ModelSource`, so the checks and their one-line errors exist once."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from minigpt_ray.config import ConfigError
from minigpt_ray.config.bases import BASES, check_installed, is_base
from minigpt_ray.modeling.bases import materialize_base
from minigpt_ray.modeling.model import PRESETS, ModelBuildSpec, is_preset, max_positions
from minigpt_ray.modeling.tokenizer import load_tokenizer


@dataclass(frozen=True)
class ModelSource:
    name: str
    """The name as given (preset, path or hub id)."""
    location: str
    """Absolute directory or hub id to load from ('' for a preset)."""
    config: PretrainedConfig | None
    """The pretrained model's config (None for a preset: its config depends on the tokenizer trained for it)."""
    field: str = "model.name"
    """The setting the name came from, for error messages."""
    base: str = ""
    """The named base this is ('' otherwise): each worker resolves it on its own node (the converted directory is in
    that node's cache)."""

    @property
    def is_preset(self) -> bool:
        return self.config is None

    @property
    def max_positions(self) -> int:
        """Context length of a pretrained model (0 for a preset: it is built for the run's block size)."""
        return 0 if self.config is None else max_positions(self.config)

    def tokenizer(self):
        """The tokenizer shipped with a pretrained model (a preset's is trained by the job)."""
        if self.is_preset:
            raise ValueError(f"{self.name} is a preset: its tokenizer is trained for the run")
        try:
            return load_tokenizer(self.location)
        except ValueError as err:
            raise ConfigError(f"{self.field}: {err}") from None

    def check_block_size(self, block_size: int) -> None:
        if self.max_positions and block_size > self.max_positions:
            raise ConfigError(
                f"data.block_size: {block_size} exceeds the {self.max_positions} positions of {self.name}"
            )

    def build_spec(self, preset_config: PretrainedConfig | None, gradient_checkpointing: bool, seed: int):
        """What a training worker needs to build this model (`preset_config`: the preset's config for this run)."""
        return ModelBuildSpec(
            preset_config=preset_config.to_dict() if self.is_preset else None,
            pretrained=None if self.is_preset else self.base or self.location,
            gradient_checkpointing=gradient_checkpointing,
            seed=seed,
        )


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _check_model_files(path: Path, name: str, field: str) -> None:
    """A model directory holds weights and a tokenizer (found now, not when workers load it)."""
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise ConfigError(f"{field}: {name} has no weights (no {', '.join(WEIGHT_FILES)} file)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"{field}: {name} has no tokenizer ({', '.join(TOKENIZER_FILES)})")


def resolve_model(name: str, field: str = "model.name", presets: bool = True) -> ModelSource:
    """Resolve `name` before any worker starts; a bad name raises ConfigError naming `field`, in one line.
    `presets=False` for jobs that need trained weights (the sweep)."""
    if is_base(name):
        check_installed(name, field)
        location = materialize_base(name)
        return ModelSource(name=name, location=str(location), config=AutoConfig.from_pretrained(location),
                           field=field, base=name)  # fmt: skip
    if is_preset(name):
        if not presets:
            raise ConfigError(f"{field}: {name} is a preset (random weights); give a trained model directory")
        return ModelSource(name=name, location="", config=None, field=field)
    path = Path(name).expanduser()
    if "/" not in name and not path.exists():
        close = difflib.get_close_matches(name, [*PRESETS, *BASES], n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"{field}: unknown model {name!r} ({hint}bases: {', '.join(BASES)}; presets: {', '.join(PRESETS)}; "
            "a hub id is written org/name, a directory as a path; `minigpt models` lists them)"
        )
    looks_like_path = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1
    if looks_like_path and not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise ConfigError(f"{field}: {name!r} is not a preset ({', '.join(PRESETS)}) and the directory {what}")
    location = str(path.resolve()) if looks_like_path else name
    if looks_like_path:
        _check_model_files(path, name, field)
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=False)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{field}: cannot load {name!r} (not a preset: {', '.join(PRESETS)}): {first}") from None
    return ModelSource(name=name, location=location, config=config, field=field)
