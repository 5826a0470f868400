"""Everything a run needs before a worker starts, with no Ray and no writes: the resolved model, the tokenizer
(trained for a preset, loaded from a model directory), the packed data and the workers' typed config. Every bad
input fails here with a ConfigError naming the field or file, so nothing reaches the cluster or `--output`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PretrainedConfig

from minigpt_ray.config import ConfigError, TrainConfig, TrainJobConfig
from minigpt_ray.data.corpora import load_documents, split_documents
from minigpt_ray.data.packing import PackedData, pack_splits
from minigpt_ray.faults import WorkerFault, nan_step
from minigpt_ray.modeling.model import ModelBuildSpec, preset_config, preset_vocab_size
from minigpt_ray.modeling.source import ModelSource, resolve_model
from minigpt_ray.modeling.tokenizer import load_tokenizer, sample_texts, train_bpe
from minigpt_ray.training.deepspeed_config import build_deepspeed_config

DIVERGENCE_FILE = "diverged.txt"
"""Written under the output by a run that stopped on NaN/inf (its reason, one line)."""


@dataclass(frozen=True)
class WorkerConfig:
    """The one object every Ray Train worker receives (frozen, defined in the package: it pickles by reference)."""

    model: ModelBuildSpec
    train: TrainConfig
    """The job's training settings (steps, batch, evaluation, precision, loss, compile)."""
    deepspeed: dict
    """DeepSpeed's own config format, built from `train` by `build_deepspeed_config` (the one place that does)."""
    block_size: int
    threads_per_worker: int
    tensorboard_dir: str
    """Absolute directory rank 0 writes TensorBoard events to."""
    divergence_file: str = ""
    """Absolute path rank 0 writes to when training diverges (the driver reads it: Ray Train's result holds the
    metrics of the last checkpoint, and a diverged run reports none)."""
    fault: WorkerFault | None = None
    """Injected failure for the fault-tolerance tests (from $MINIGPT_RAY_FAULT; None in normal runs)."""
    nan_step: int | None = None
    """Injected divergence: weights are NaN after this step (from $MINIGPT_RAY_FAULT; None in normal runs)."""

    @property
    def zero_stage(self) -> int:
        return self.train.zero_stage


@dataclass
class PreparedRun:
    cfg: TrainJobConfig
    source: ModelSource
    tokenizer: object
    model_config: PretrainedConfig
    data: PackedData

    def worker_config(self, world_size: int) -> WorkerConfig:
        train = self.cfg.train
        return WorkerConfig(
            model=self.source.build_spec(self.model_config, self.cfg.model.gradient_checkpointing, train.seed),
            train=train,
            deepspeed=build_deepspeed_config(train, world_size),
            block_size=self.cfg.data.block_size,
            threads_per_worker=max(1, int(train.cpus_per_worker)),
            tensorboard_dir=str(Path(self.cfg.output).resolve() / "tensorboard"),
            divergence_file=str(Path(self.cfg.output).resolve() / DIVERGENCE_FILE),
            fault=WorkerFault.from_env(world_size),
            nan_step=nan_step(),
        )


def saved_tokenizer_dir(output: str) -> Path:
    """Where a run keeps the tokenizer it trained, written once the inputs are validated."""
    return Path(output) / "tokenizer"


def prepare_run(cfg: TrainJobConfig) -> PreparedRun:
    # The model is resolved first: a wrong name fails in a second, before the corpus is read.
    source = resolve_model(cfg.model.name)
    source.check_block_size(cfg.data.block_size)
    documents = load_documents(cfg.data.sources, cfg.data.txt_split, cfg.data.max_chars_per_source)
    train_docs, val_docs = split_documents(documents, cfg.data.val_fraction)
    if source.is_preset:
        tokenizer = _preset_tokenizer(cfg, [d.text for d in train_docs])
        model_config = preset_config(source.name, len(tokenizer), cfg.data.block_size, tokenizer.eos_token_id)
    else:
        tokenizer, model_config = source.tokenizer(), source.config
        if len(tokenizer) > model_config.vocab_size:
            raise ConfigError(
                f"model.name: tokenizer of {source.name} has {len(tokenizer)} tokens, more than the "
                f"model's vocab_size {model_config.vocab_size}"
            )
    data = pack_splits(cfg.data, tokenizer, train_docs, val_docs)
    return PreparedRun(cfg=cfg, source=source, tokenizer=tokenizer, model_config=model_config, data=data)


def _preset_tokenizer(cfg: TrainJobConfig, train_texts: list[str]):
    vocab_size = preset_vocab_size(cfg.model.name, cfg.model.vocab_size)
    saved = saved_tokenizer_dir(cfg.output)
    if saved.is_dir():  # a resumed run must keep the token ids its checkpoints were trained with
        return load_tokenizer(str(saved))
    return train_bpe(sample_texts(train_texts, cfg.model.tokenizer_train_chars, cfg.train.seed), vocab_size)
