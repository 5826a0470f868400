"""Typed configuration: defaults, YAML + CLI overrides, validation that names the field.

Each field carries one docstring (the string literal right below it); ``--help`` and the README are built from them,
so a setting is documented in exactly one place. Every CLI flag is ``--<field-name>`` with dashes; field names are
unique across sections so a flag maps to one field. Two short aliases exist because users type them most:
``--model`` (model.name) and ``--data`` (data.sources).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

import yaml


class ConfigError(ValueError):
    """A bad setting or input; the message names the field or file and fits on one line."""


@dataclass
class ModelConfig:
    name: str = "gpt-micro"
    """Built-in preset (see `minigpt_ray.model.PRESETS`: random init, i.e. pretraining) or an HF model directory /
    hub id loaded with AutoModelForCausalLM.from_pretrained (safetensors, trust_remote_code off)."""
    vocab_size: int = 0
    """Vocabulary size of the byte-level BPE tokenizer trained for a preset (0 = the preset's default). Ignored when
    the model directory brings its own tokenizer."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["shakespeare"])
    """Training text: built-in corpora (shakespeare, zh-news, zh-reviews) and/or paths to .txt, .jsonl (a `text`
    field), .parquet (a `text` column) files, directories of them, or a `datasets` dataset saved to disk. Several
    sources are mixed; on the CLI separate them with commas."""
    max_chars_per_source: int = 0
    """Read at most this many characters from each source, taking whole documents in a fixed order (0 = all)."""
    val_fraction: float = 0.02
    """Fraction of documents held out for validation; the split hashes each document's text, so it is the same
    on every run and machine."""
    block_size: int = 256
    """Tokens per training sequence; documents are EOS-separated and packed into blocks of this length."""
    txt_split: str = "paragraph"
    """How a user .txt file is cut into documents: paragraph (blank-line separated), line, or file."""
    tokenizer_train_chars: int = 3_000_000
    """Characters of training text sampled to train the BPE tokenizer (0 = all)."""


@dataclass
class TrainConfig:
    num_workers: int = 2
    """Ray Train workers (data-parallel ranks). One GPU each when use_gpu is on."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker; also the number of torch threads on CPU workers."""
    use_gpu: str = "auto"
    """auto (use GPUs when the cluster has them), true or false. GPU workers use nccl, CPU workers gloo."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0 (plain DDP), 1 (optimizer states sharded), 2 (+gradients), 3 (+parameters)."""
    precision: str = "bf16-mixed"
    """fp32; bf16-mixed (fp32 weights, bf16 matmuls under torch.autocast: the fastest on CPU); bf16 (DeepSpeed's
    bf16: bf16 weights and gradients, fp32 master weights in the optimizer); fp16 (GPU only, loss scaling)."""
    micro_batch_size: int = 8
    """Sequences per worker per forward/backward pass."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step; global batch = micro_batch_size * grad_accum_steps * workers."""
    max_steps: int = 200
    """Optimizer steps to train for (the cosine schedule ends here)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine decay, as a fraction of lr."""
    warmup_steps: int = 20
    """Linear warmup steps from 0 to lr."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = off)."""
    eval_every: int = 50
    """Compute validation loss/perplexity every N steps (and at the start and the end)."""
    eval_batches: int = 20
    """Validation micro-batches per evaluation, the same ones every time (0 = the whole validation set)."""
    checkpoint_every: int = 100
    """Save a sharded DeepSpeed checkpoint through ray.train.report every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints Ray Train keeps."""
    max_failures: int = 2
    """Worker-group restarts (from the latest checkpoint) before the run fails."""
    log_every: int = 10
    """Print a progress line (step, loss, lr, tokens/s, MFU, ETA) every N steps."""
    bucket_size: int = 5_000_000
    """DeepSpeed communication bucket size in elements (gradient reduce, all-gather, ZeRO-3 prefetch). Each bucket
    is a buffer on every worker: larger is faster for big models on GPUs, smaller saves memory on small ones."""
    seed: int = 1234
    """Seed for model init, data order and sampling."""
    peak_tflops: float = 0.0
    """Peak TFLOP/s of one worker's device for MFU (0 = look up the GPU model, or measure a matmul on CPU)."""
    fused_loss: bool = True
    """Compute the LM head and cross-entropy in row chunks, gradients included, so the [tokens, vocab] logits never
    exist in full (Llama-style and GPT-2 models under ZeRO 0-2; ZeRO-3 and other architectures use the model's own
    loss). The same loss; measured faster on CPU in fp32 and bf16, and the full logits are never held in memory."""
    fused_optimizer: bool = True
    """Run AdamW as torch's fused kernel (one pass over each parameter tensor, on CPU and GPU) instead of one op
    per update term; the same update. Measured on one CPU thread: 4.9 vs 19-23 ms per step (torch's for-loop and
    foreach kernels) for 4.5M parameters."""
    compile: bool = False
    """torch.compile the training forward (ZeRO 0-2): its first step compiles (~40-90 s on CPU, cached between runs),
    later steps fuse the elementwise work that bf16 does not speed up. Evaluation and export stay eager."""
    check_resources: bool = True
    """Fail before starting if the cluster cannot place all workers now (turn off on autoscaling clusters)."""


@dataclass
class RunConfig:
    output: str = "runs/finetune"
    """Output directory: model/ (HF format), metrics.json, checkpoints/ (Ray Train storage). Use shared storage
    (e.g. NFS) on a multi-node cluster; remote URIs (s3://) are not supported yet."""
    run_name: str = ""
    """Ray Train run name; re-running with the same name and output resumes from its latest checkpoint
    (default: the output directory's name)."""
    ray_address: str = ""
    """Ray cluster to join (default: $RAY_ADDRESS as set by `ray job submit`, else an embedded local Ray)."""
    sample_prompt: str = "今天天气"
    """Prompt for a short seeded sample (top-k 40, temperature 0.8) printed and stored in metrics.json at the end
    ('' = none)."""
    sample_tokens: int = 40
    """Tokens generated for the sample."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    ALIASES: ClassVar[dict[str, str]] = {"name": "model", "sources": "data"}  # short flags users type most

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "RunConfig":
        validate(self)
        return self


PRECISIONS = ("fp32", "bf16-mixed", "bf16", "fp16")


def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the docstring literal written under it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[prev.target.id] = " ".join(str(node.value.value).split())
    return docs


def _sections(root: type) -> dict[str, type]:
    """Fields of `root` that are dataclasses themselves: the YAML sections."""
    hints = get_type_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root) if dataclasses.is_dataclass(hints[f.name])}


def _flag(field_name: str, aliases: dict[str, str]) -> str:
    return "--" + aliases.get(field_name, field_name).replace("_", "-")


def _iter_fields(root: type):
    """Yield (section or None, dataclass field, type) for every leaf setting."""
    sections = _sections(root)
    for f in dataclasses.fields(root):
        if f.name in sections:
            hints = get_type_hints(sections[f.name])
            for sub in dataclasses.fields(sections[f.name]):
                yield f.name, sub, hints[sub.name]
        else:
            yield None, f, get_type_hints(root)[f.name]


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _list_parser(item: type):
    def parse(text: str) -> list:
        try:
            return [item(part) for part in _parse_list(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None
    return parse


SCALAR_PARSERS = {bool: _parse_bool, int: int, float: float, str: str, list[str]: _parse_list,
                  list[int]: _list_parser(int), list[float]: _list_parser(float)}
METAVARS = {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}


def build_parser(description: str, root: type | None = None) -> argparse.ArgumentParser:
    root = root or RunConfig
    aliases = getattr(root, "ALIASES", {})
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with any of the settings below (CLI flags override it)")
    docs = {None: field_docs(root), **{name: field_docs(cls) for name, cls in _sections(root).items()}}
    defaults = root()
    for section, f, typ in _iter_fields(root):
        default = getattr(getattr(defaults, section) if section else defaults, f.name)
        key = f"{section}.{f.name}" if section else f.name
        parser.add_argument(_flag(f.name, aliases), dest=key, type=SCALAR_PARSERS[typ], default=None,
                            metavar=METAVARS.get(typ, "A,B,..."),
                            help=f"{docs[section].get(f.name, '')} [{key}, default: {default!r}]".replace("%", "%%"))
    return parser


def load_yaml(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of settings")
    return loaded


def from_dict(values: dict[str, Any], root: type | None = None):
    """Build a config (RunConfig by default) from nested settings; unknown keys are an error naming the key."""
    cfg = (root or RunConfig)()
    sections = _sections(type(cfg))
    for key, value in values.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
            section = getattr(cfg, key)
            for sub_key, sub_value in value.items():
                _set(section, f"{key}.{sub_key}", sub_key, sub_value)
        else:
            _set(cfg, key, key, value)
    return cfg


def _set(target: Any, full_key: str, name: str, value: Any) -> None:
    hints = get_type_hints(type(target))
    if name not in hints or dataclasses.is_dataclass(hints[name]):
        raise ConfigError(f"{full_key}: unknown setting")
    typ = hints[name]
    item = typ.__args__[0] if getattr(typ, "__origin__", None) is list else None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if item is not None and not isinstance(value, list):
        value = [value] if not isinstance(value, str) else _parse_list(value)
    if item is not None:
        value = [float(v) if item is float and isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        ok = all(isinstance(v, item) and not (item is not bool and isinstance(v, bool)) for v in value)
    else:
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{full_key}: expected {getattr(typ, '__name__', typ)}, got {value!r}")
    setattr(target, name, value)


def parse_args(argv: list[str] | None, description: str, root: type | None = None):
    """CLI → (YAML defaults, then flags) → validated config. Raises ConfigError on any bad setting."""
    args = build_parser(description, root).parse_args(argv)
    values = load_yaml(args.config) if args.config else {}
    cfg = from_dict(values, root)
    for key, value in vars(args).items():
        if key == "config" or value is None:
            continue
        if "." in key:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        else:
            setattr(cfg, key, value)
    return cfg.validate()


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def validate(cfg: RunConfig) -> None:
    """Check every value that has a bounded domain; the first bad one raises ConfigError naming it."""
    t, d, m = cfg.train, cfg.data, cfg.model
    _require(bool(cfg.output.strip()), "output", "must be a directory path", cfg.output)
    _require("://" not in cfg.output, "output", "must be a filesystem path (remote URIs are not supported yet)",
             cfg.output)
    _require(m.vocab_size == 0 or m.vocab_size >= 300, "model.vocab_size", "must be 0 or >= 300 (256 bytes + merges)",
             m.vocab_size)
    _require(len(d.sources) > 0, "data.sources", "needs at least one corpus or path", d.sources)
    _require(d.max_chars_per_source >= 0, "data.max_chars_per_source", "must be >= 0", d.max_chars_per_source)
    _require(0 < d.val_fraction < 1, "data.val_fraction", "must be in (0, 1)", d.val_fraction)
    _require(d.block_size >= 8, "data.block_size", "must be >= 8", d.block_size)
    _require(d.txt_split in ("paragraph", "line", "file"), "data.txt_split", "must be paragraph, line or file",
             d.txt_split)
    _require(t.num_workers >= 1, "train.num_workers", "must be >= 1", t.num_workers)
    _require(t.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0", t.cpus_per_worker)
    _require(t.use_gpu in ("auto", "true", "false"), "train.use_gpu", "must be auto, true or false", t.use_gpu)
    _require(t.zero_stage in (0, 1, 2, 3), "train.zero_stage", "must be 0, 1, 2 or 3", t.zero_stage)
    _require(t.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}", t.precision)
    _require(t.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1", t.micro_batch_size)
    _require(t.grad_accum_steps >= 1, "train.grad_accum_steps", "must be >= 1", t.grad_accum_steps)
    _require(t.max_steps >= 1, "train.max_steps", "must be >= 1", t.max_steps)
    _require(t.lr > 0, "train.lr", "must be > 0", t.lr)
    _require(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]", t.min_lr_ratio)
    _require(0 <= t.warmup_steps < t.max_steps, "train.warmup_steps", "must be in [0, max_steps)", t.warmup_steps)
    _require(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
    _require(t.grad_clip >= 0, "train.grad_clip", "must be >= 0", t.grad_clip)
    for key in ("eval_every", "checkpoint_every", "log_every"):
        _require(getattr(t, key) >= 1, f"train.{key}", "must be >= 1", getattr(t, key))
    _require(t.eval_batches >= 0, "train.eval_batches", "must be >= 0", t.eval_batches)
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", t.keep_checkpoints)
    _require(t.max_failures >= 0, "train.max_failures", "must be >= 0", t.max_failures)
    _require(t.bucket_size >= 100_000, "train.bucket_size", "must be >= 100000", t.bucket_size)
    _require(not (t.compile and t.zero_stage == 3), "train.compile",
             "is not supported with ZeRO-3 (its parameter-gathering hooks need the eager forward)", t.compile)
    _require(t.peak_tflops >= 0, "train.peak_tflops", "must be >= 0", t.peak_tflops)
    _require(cfg.sample_tokens >= 1, "sample_tokens", "must be >= 1", cfg.sample_tokens)
    if t.precision == "fp16" and t.use_gpu == "false":
        raise ConfigError("train.precision: fp16 needs GPU workers (use bf16 on CPU), got 'fp16'")
