"""Typed settings of every job: one dataclass per YAML section, one docstring per field, validation that names the
field. No Ray, no torch: parsing a command line never starts anything."""

from minigpt_ray.config.base import ConfigError, from_dict, load_yaml, parse_args, require, to_yaml
from minigpt_ray.config.compress import CandidateError, CandidateSpec
from minigpt_ray.config.export import ExportJobConfig
from minigpt_ray.config.serve import ServeJobConfig
from minigpt_ray.config.sweep import SweepJobConfig
from minigpt_ray.config.train import (
    AdapterConfig,
    CorpusConfig,
    DistillConfig,
    ModelConfig,
    TrainConfig,
    TrainJobConfig,
)

__all__ = [
    "CandidateError",
    "CandidateSpec",
    "ConfigError",
    "AdapterConfig",
    "CorpusConfig",
    "DistillConfig",
    "ExportJobConfig",
    "ModelConfig",
    "ServeJobConfig",
    "SweepJobConfig",
    "TrainConfig",
    "TrainJobConfig",
    "from_dict",
    "load_yaml",
    "parse_args",
    "require",
    "to_yaml",
]
