"""Everything a run needs before a worker starts, with no Ray and no writes: the resolved model, the tokenizer
(trained for a preset, loaded from a model directory), the packed data and the workers' typed config. Every bad
input fails here with a ConfigError naming the field or file, so nothing reaches the cluster or `--output`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PretrainedConfig

from minigpt_ray.config import ConfigError, TrainConfig, TrainJobConfig
from minigpt_ray.data.cache import DiskCache, tokenizer_key
from minigpt_ray.data.corpora import load_documents, split_documents
from minigpt_ray.data.packing import PackedData, pack_splits, shuffled_blocks
from minigpt_ray.faults import WorkerFault, nan_step
from minigpt_ray.modeling.distill import DistillSpec, derive_student_config
from minigpt_ray.modeling.lora import LoraSpec
from minigpt_ray.modeling.model import ModelBuildSpec, SampleSpec, preset_config, preset_vocab_size
from minigpt_ray.modeling.source import ModelSource, resolve_model
from minigpt_ray.modeling.tokenizer import CHAT_TEMPLATE, load_tokenizer, sample_texts, save_tokenizer, train_bpe
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
    distill: DistillSpec | None = None
    """The frozen teacher each worker runs beside the student, or None (no teacher, or alpha 0: labels only)."""
    lora: LoraSpec | None = None
    """LoRA adapters to train instead of every weight, or None (full fine-tuning)."""
    train_blocks: object = None
    """The packed training blocks in Ray's object store (an ObjectRef the trainer puts; each worker reads every
    world-th block, without copying on its own node)."""
    val_blocks: object = None
    """The packed validation blocks in Ray's object store (every worker evaluates its share of them)."""
    sample: SampleSpec | None = None
    """The end-of-run sample rank 0 draws from the final model while it is in memory (None: no sample_prompt)."""

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
    teacher: ModelSource | None = None
    """The distillation teacher, resolved (None without one)."""
    tokenizer_origin: str = "model"
    """Where the tokenizer came from: the model ("model"), the run's own output ("resumed"), the cache ("hit"), or
    trained here ("miss", "rebuilt": a corrupt cache entry replaced, "off": data.no_cache)."""

    @property
    def derived_student(self) -> bool:
        """The student is derived from the teacher (distill.student_layers): written to `student_dir` at start."""
        return bool(self.teacher and self.cfg.distill.student_layers)

    def worker_config(self, world_size: int) -> WorkerConfig:
        train, distill = self.cfg.train, self.cfg.distill
        spec = DistillSpec(self.teacher.location, distill.alpha, distill.temperature) if self.teacher else None
        lora = self.cfg.lora
        adapters = LoraSpec(lora.r, lora.lora_alpha, lora.dropout, tuple(lora.targets), self.source.location)
        return WorkerConfig(
            distill=spec if distill.alpha > 0 else None,
            lora=adapters if lora.r else None,
            model=self.source.build_spec(self.model_config, self.cfg.model.gradient_checkpointing, train.seed),
            train=train,
            deepspeed=build_deepspeed_config(train, world_size),
            block_size=self.cfg.data.block_size,
            threads_per_worker=max(1, int(train.cpus_per_worker)),
            tensorboard_dir=str(Path(self.cfg.output).resolve() / "tensorboard"),
            divergence_file=str(Path(self.cfg.output).resolve() / DIVERGENCE_FILE),
            fault=WorkerFault.from_env(world_size),
            nan_step=nan_step(),
            sample=self.sample_spec(),
        )

    def sample_spec(self) -> SampleSpec | None:
        cfg = self.cfg
        if not cfg.sample_prompt:
            return None
        return SampleSpec.for_prompt(self.tokenizer, cfg.sample_prompt, cfg.sample_tokens, cfg.train.seed)


def saved_tokenizer_dir(output: str) -> Path:
    """Where a run keeps the tokenizer it trained, written once the inputs are validated."""
    return Path(output) / "tokenizer"


def student_dir(output: str) -> Path:
    """Where a student derived from its teacher (distill.student_layers) is written before the workers start."""
    return Path(output).resolve() / "student_init"


def prepare_run(cfg: TrainJobConfig) -> PreparedRun:
    # Models are resolved first: a wrong name fails in a second, before the corpus is read.
    teacher = resolve_model(cfg.distill.teacher, "distill.teacher", presets=False) if cfg.distill.teacher else None
    tokenizer_origin = "model"
    source = _student_source(cfg, teacher) if teacher else resolve_model(cfg.model.name)
    for model in (source, teacher):
        if model is not None:
            model.check_block_size(cfg.data.block_size)
    documents = load_documents(cfg.data.sources, cfg.data.txt_split, cfg.data.max_chars_per_source)
    train_docs, val_docs = split_documents(documents, cfg.data.val_fraction)
    if teacher is not None:
        tokenizer, model_config = _distill_student(source, teacher, cfg.data.block_size)
    elif source.is_preset:
        tokenizer, tokenizer_origin = _preset_tokenizer(cfg, [d.text for d in train_docs])
        model_config = preset_config(source.name, len(tokenizer), cfg.data.block_size, tokenizer.eos_token_id)
    else:
        tokenizer, model_config = source.tokenizer(), source.config
        if len(tokenizer) > model_config.vocab_size:
            raise ConfigError(
                f"model.name: tokenizer of {source.name} has {len(tokenizer)} tokens, more than the "
                f"model's vocab_size {model_config.vocab_size}"
            )
    data = pack_splits(cfg.data, tokenizer, train_docs, val_docs)
    data.train = shuffled_blocks(data.train, cfg.train.seed)
    return PreparedRun(
        cfg=cfg,
        source=source,
        tokenizer=tokenizer,
        model_config=model_config,
        data=data,
        teacher=teacher,
        tokenizer_origin=tokenizer_origin,
    )


def _student_source(cfg: TrainJobConfig, teacher: ModelSource) -> ModelSource:
    """The student of a distillation: model.name, or the teacher's architecture at distill.student_layers."""
    d = cfg.distill
    if not d.student_layers:
        return resolve_model(cfg.model.name)
    try:
        config = derive_student_config(teacher.config, d.student_layers, d.student_hidden_size)
    except (ValueError, AttributeError) as err:
        raise ConfigError(f"distill.student_hidden_size: {err}") from None
    name = f"{teacher.name} at {d.student_layers} layers" + (
        f", width {d.student_hidden_size}" if d.student_hidden_size else ""
    )
    return ModelSource(name=name, location=str(student_dir(cfg.output)), config=config, field="distill.student_layers")


def _distill_student(source: ModelSource, teacher: ModelSource, block_size: int):
    """(tokenizer, student config) of a distillation: the teacher's tokenizer, which the student must share, since
    the loss compares their outputs token by token."""
    tokenizer = teacher.tokenizer()
    vocab = teacher.config.vocab_size
    if source.is_preset:
        return tokenizer, preset_config(source.name, vocab, block_size, tokenizer.eos_token_id)
    if source.field != "distill.student_layers":
        mine = source.tokenizer()
        if source.config.vocab_size != vocab or mine.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(
                f"distill.teacher: {teacher.name} has another vocabulary than the student {source.name} "
                f"({vocab} vs {source.config.vocab_size} logits, {len(tokenizer)} vs {len(mine)} tokens); "
                "distillation compares their outputs token by token"
            )
    return tokenizer, source.config


def _preset_tokenizer(cfg: TrainJobConfig, train_texts: list[str]) -> tuple[object, str]:
    """(the BPE tokenizer a preset trains on, where it came from: "resumed", or the cache's status)."""
    vocab_size = preset_vocab_size(cfg.model.name, cfg.model.vocab_size)
    saved = saved_tokenizer_dir(cfg.output)
    if saved.is_dir():  # a resumed run must keep the token ids its checkpoints were trained with
        return load_tokenizer(str(saved)), "resumed"
    texts = sample_texts(train_texts, cfg.model.tokenizer_train_chars, cfg.train.seed)
    return DiskCache.from_settings(cfg.data.cache_dir, cfg.data.no_cache).fetch(
        "tokenizer",
        lambda: tokenizer_key(texts, vocab_size, CHAT_TEMPLATE),
        lambda path: load_tokenizer(str(path)),
        lambda: train_bpe(texts, vocab_size),
        save_tokenizer,
    )
