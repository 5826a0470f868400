"""Everything a run needs before a worker starts, with no Ray and no writes: the model's config, the tokenizer
(trained for a preset, loaded from a model directory), and the packed data. Every bad input fails here with a
ConfigError naming the field or file, so nothing reaches the cluster or `--output`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PretrainedConfig

from minigpt_ray.config import ConfigError, RunConfig
from minigpt_ray.corpora import load_documents, split_documents
from minigpt_ray.data import PackedData, pack_splits
from minigpt_ray.deepspeed_config import build_deepspeed_config
from minigpt_ray.model import check_pretrained, is_preset, model_spec, preset_config, preset_vocab_size
from minigpt_ray.tokenizer import load_tokenizer, sample_texts, train_bpe


@dataclass
class PreparedRun:
    cfg: RunConfig
    tokenizer: object
    model_config: PretrainedConfig
    data: PackedData

    def worker_config(self, world_size: int, crash_once: dict | None = None) -> dict:
        """The one plain dict the Ray Train workers receive."""
        train = self.cfg.train
        return {
            "model": model_spec(self.cfg.model.name, self.model_config, self.cfg.model.gradient_checkpointing,
                                train.seed),
            "deepspeed": build_deepspeed_config(train, world_size),
            "train": {k: getattr(train, k) for k in ("micro_batch_size", "grad_accum_steps", "max_steps", "eval_every",
                                                     "eval_batches", "checkpoint_every", "log_every", "seed",
                                                     "peak_tflops", "precision", "fused_loss",
                                                     "compile")},
            "block_size": self.cfg.data.block_size,
            "threads_per_worker": max(1, int(train.cpus_per_worker)),
            "crash_once": crash_once,
        }


def saved_tokenizer_dir(output: str) -> Path:
    """Where a run keeps the tokenizer it trained, written once the inputs are validated."""
    return Path(output) / "tokenizer"


def _max_positions(config: PretrainedConfig) -> int:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 0


def prepare_run(cfg: RunConfig) -> PreparedRun:
    name = cfg.model.name
    # The model is checked first: a wrong name fails in a second, before the corpus is read.
    model_config = None if is_preset(name) else check_pretrained(name)
    documents = load_documents(cfg.data.sources, cfg.data.txt_split, cfg.data.max_chars_per_source)
    train_docs, val_docs = split_documents(documents, cfg.data.val_fraction)
    if model_config is None:
        tokenizer = _preset_tokenizer(cfg, [d.text for d in train_docs])
        model_config = preset_config(name, len(tokenizer), cfg.data.block_size, tokenizer.eos_token_id)
    else:
        tokenizer = load_tokenizer(name)
        _check_fits(cfg, name, model_config, tokenizer)
    data = pack_splits(cfg.data, tokenizer, train_docs, val_docs)
    return PreparedRun(cfg=cfg, tokenizer=tokenizer, model_config=model_config, data=data)


def _preset_tokenizer(cfg: RunConfig, train_texts: list[str]):
    vocab_size = preset_vocab_size(cfg.model.name, cfg.model.vocab_size)
    saved = saved_tokenizer_dir(cfg.output)
    if saved.is_dir():  # a resumed run must keep the token ids its checkpoints were trained with
        return load_tokenizer(str(saved))
    return train_bpe(sample_texts(train_texts, cfg.data.tokenizer_train_chars, cfg.train.seed), vocab_size)


def _check_fits(cfg: RunConfig, name: str, model_config: PretrainedConfig, tokenizer) -> None:
    positions = _max_positions(model_config)
    if positions and cfg.data.block_size > positions:
        raise ConfigError(f"data.block_size: {cfg.data.block_size} exceeds the {positions} positions of {name}")
    if len(tokenizer) > model_config.vocab_size:
        raise ConfigError(f"model.name: tokenizer of {name} has {len(tokenizer)} tokens, more than the model's "
                          f"vocab_size {model_config.vocab_size}")
