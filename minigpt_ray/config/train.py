"""Settings of the training job (`minigpt finetune`, `jobs/finetune.py`): model, corpus, optimisation, outputs.

`CorpusConfig` is shared with the compression sweep: both jobs read text the same way."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import ClassVar

from minigpt_ray.config.base import ConfigError, check_output_dir, require


@dataclass
class ModelConfig:
    name: str = "gpt-micro"
    """Built-in preset (gpt-nano, gpt-micro, gpt-mini, gpt-small: random init, i.e. pretraining) or an HF model
    directory / hub id loaded with AutoModelForCausalLM.from_pretrained (safetensors, trust_remote_code off)."""
    vocab_size: int = 0
    """Vocabulary size of the byte-level BPE tokenizer trained for a preset (0 = the preset's default). Ignored when
    the model directory brings its own tokenizer."""
    tokenizer_train_chars: int = 3_000_000
    """Characters of training text sampled to train a preset's BPE tokenizer (0 = all)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""


@dataclass
class CorpusConfig:
    """Which text a job reads and how it is split and cut into blocks (training and the sweep alike)."""

    sources: list[str] = field(default_factory=lambda: ["shakespeare"])
    """Text: built-in corpora (shakespeare, zh-news, zh-reviews) and/or paths to .txt, .jsonl (a `text` field),
    .parquet (a `text` column) files, directories of them, or a `datasets` dataset saved to disk. Several sources
    are mixed; on the CLI separate them with commas."""
    max_chars_per_source: int = 0
    """Read at most this many characters from each source, taking whole documents in a fixed order (0 = all)."""
    val_fraction: float = 0.02
    """Fraction of documents held out for validation; the split hashes each document's text, so it is the same
    on every run and machine."""
    block_size: int = 256
    """Tokens per sequence; documents are EOS-separated and packed into blocks of this length."""
    txt_split: str = "paragraph"
    """How a user .txt file is cut into documents: paragraph (blank-line separated), line, or file."""
    no_cache: bool = False
    """Rebuild the tokenizer and the packed blocks instead of reusing them from the cache, and store nothing."""
    cache_dir: str = ""
    """Where trained tokenizers and packed corpora are cached, keyed by their inputs (default: $MINIGPT_RAY_CACHE,
    else ~/.cache/minigpt_ray)."""


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
    precision: str = "auto"
    """auto (bf16-mixed on GPUs and on CPUs with native bf16 matmuls, AVX-512 BF16 or AMX; fp32 on other CPUs, where
    bf16 matmuls are emulated and far slower than fp32); fp32; bf16-mixed (fp32 weights, bf16 matmuls under
    torch.autocast: the fastest where the CPU has bf16); bf16 (DeepSpeed's bf16: bf16 weights and gradients, fp32
    master weights in the optimizer); fp16 (GPU only, loss scaling)."""
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
    """AdamW decoupled weight decay, applied to weight matrices and embeddings only (not to norm gains or
    biases)."""
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
    loss). The same loss, faster and smaller (docs/benchmarks.md)."""
    fused_optimizer: bool = True
    """Run AdamW as torch's fused kernel (one pass over each parameter tensor, on CPU and GPU) instead of one op
    per update term; the same update, several times faster."""
    compile: bool = False
    """torch.compile the training forward (ZeRO 0-2): its first step compiles (about a minute on a CPU, cached between
    runs), later steps fuse the elementwise work that bf16 does not speed up. Evaluation and export stay eager."""
    check_resources: bool = True
    """Fail before starting if the cluster cannot place all workers now (turn off on autoscaling clusters)."""
    placement_strategy: str = "PACK"
    """How Ray places the workers' bundles: PACK (as few nodes as possible: cheapest communication), SPREAD (across
    nodes when it can: one node's loss costs fewer workers), STRICT_PACK or STRICT_SPREAD (one node / one worker per
    node, or wait until the cluster has them)."""


@dataclass
class DistillConfig:
    """Knowledge distillation: the model being trained (the student) learns the teacher's output distribution."""

    teacher: str = ""
    """Teacher model directory (a trained HF causal LM with its tokenizer, e.g. a fine-tuned model/), frozen; ''
    = no distillation. The student trains on its tokenizer: a preset student takes it, an HF student must share it."""
    alpha: float = 0.5
    """Weight of the soft term: loss = alpha·T²·KL(teacher‖student at temperature T) + (1−alpha)·CE(labels).
    0 trains the same student on the labels alone, without running the teacher (the twin to compare with)."""
    temperature: float = 2.0
    """Softmax temperature T of the soft term (> 1 shows the student more of the teacher's ranking of tokens)."""
    student_layers: int = 0
    """> 0: the student is the teacher's architecture with this many layers (model.name is then not used)."""
    student_hidden_size: int = 0
    """With student_layers: the student's width (0 = the teacher's; a multiple of its head size)."""
    init_from_teacher: bool = True
    """A derived student of the teacher's width starts from the teacher's embeddings, norms and evenly spaced
    layers (every other layer at half depth, as DistilBERT and DistilGPT2 did); otherwise from random weights."""


@dataclass
class AdapterConfig:
    """LoRA: train low-rank adapters beside frozen weights instead of every weight (peft)."""

    r: int = 0
    """Adapter rank (0 = full fine-tuning). The export writes the adapter (adapter/) and the merged model (model/)."""
    lora_alpha: float = 32.0
    """Adapter scale numerator: the update is (lora_alpha / r)·B·A."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    targets: list[str] = field(default_factory=lambda: ["all-linear"])
    """Layers that get adapters: module names (q_proj, v_proj, ...; c_attn for GPT-2) or all-linear (the attention
    and MLP projections: every linear layer but the output head)."""


@dataclass
class TrainJobConfig:
    """Settings of one training job (`minigpt finetune`): pretraining a preset or fine-tuning an HF model."""

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
    data: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: AdapterConfig = field(default_factory=AdapterConfig)

    # Short flags users type most, and the distillation flags under the names other tools use.
    ALIASES: ClassVar[dict[str, str]] = {
        "name": "model",
        "sources": "data",
        "alpha": "distill_alpha",
        "temperature": "distill_temperature",
        "r": "lora_r",
        "dropout": "lora_dropout",
        "targets": "lora_targets",
    }

    def validate(self) -> TrainJobConfig:
        validate_train_job(self)
        return self


PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16", "fp16")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def validate_corpus(d: CorpusConfig) -> None:
    require(len(d.sources) > 0, "data.sources", "needs at least one corpus or path", d.sources)
    require(d.max_chars_per_source >= 0, "data.max_chars_per_source", "must be >= 0", d.max_chars_per_source)
    require(0 < d.val_fraction < 1, "data.val_fraction", "must be in (0, 1)", d.val_fraction)
    require(d.block_size >= 8, "data.block_size", "must be >= 8", d.block_size)
    require(
        d.txt_split in ("paragraph", "line", "file"), "data.txt_split", "must be paragraph, line or file", d.txt_split
    )


def validate_train_job(cfg: TrainJobConfig) -> None:
    """Check every value that has a bounded domain; the first bad one raises ConfigError naming it."""
    t, m = cfg.train, cfg.model
    require(bool(cfg.output.strip()), "output", "must be a directory path", cfg.output)
    require(
        "://" not in cfg.output, "output", "must be a filesystem path (remote URIs are not supported yet)", cfg.output
    )
    check_output_dir(cfg.output, joins_cluster=bool(cfg.ray_address or os.environ.get("RAY_ADDRESS")))
    require(
        not set("/\\") & set(cfg.run_name) and cfg.run_name not in (".", ".."),
        "run_name",
        "must be a plain name (no path separators)",
        cfg.run_name,
    )
    require(
        m.vocab_size == 0 or m.vocab_size >= 300,
        "model.vocab_size",
        "must be 0 or >= 300 (256 bytes + merges)",
        m.vocab_size,
    )
    require(m.tokenizer_train_chars >= 0, "model.tokenizer_train_chars", "must be >= 0", m.tokenizer_train_chars)
    validate_corpus(cfg.data)
    require(t.num_workers >= 1, "train.num_workers", "must be >= 1", t.num_workers)
    require(t.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0", t.cpus_per_worker)
    require(t.use_gpu in ("auto", "true", "false"), "train.use_gpu", "must be auto, true or false", t.use_gpu)
    require(t.zero_stage in (0, 1, 2, 3), "train.zero_stage", "must be 0, 1, 2 or 3", t.zero_stage)
    require(t.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}", t.precision)
    require(t.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1", t.micro_batch_size)
    require(t.grad_accum_steps >= 1, "train.grad_accum_steps", "must be >= 1", t.grad_accum_steps)
    require(t.max_steps >= 1, "train.max_steps", "must be >= 1", t.max_steps)
    require(math.isfinite(t.lr) and t.lr > 0, "train.lr", "must be a finite number > 0", t.lr)
    require(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]", t.min_lr_ratio)
    require(0 <= t.warmup_steps < t.max_steps, "train.warmup_steps", "must be in [0, max_steps)", t.warmup_steps)
    require(
        math.isfinite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", "must be finite and >= 0",
        t.weight_decay,
    )  # fmt: skip
    require(math.isfinite(t.grad_clip) and t.grad_clip >= 0, "train.grad_clip", "must be finite and >= 0", t.grad_clip)
    for key in ("eval_every", "checkpoint_every", "log_every"):
        require(getattr(t, key) >= 1, f"train.{key}", "must be >= 1", getattr(t, key))
    require(t.eval_batches >= 0, "train.eval_batches", "must be >= 0", t.eval_batches)
    require(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", t.keep_checkpoints)
    require(t.max_failures >= 0, "train.max_failures", "must be >= 0", t.max_failures)
    strategies = ", ".join(PLACEMENT_STRATEGIES)
    require(t.placement_strategy in PLACEMENT_STRATEGIES, "train.placement_strategy", f"must be one of {strategies}",
            t.placement_strategy)  # fmt: skip
    require(t.bucket_size >= 100_000, "train.bucket_size", "must be >= 100000", t.bucket_size)
    require(
        not (t.compile and t.zero_stage == 3),
        "train.compile",
        "is not supported with ZeRO-3 (its parameter-gathering hooks need the eager forward)",
        t.compile,
    )
    require(t.peak_tflops >= 0, "train.peak_tflops", "must be >= 0", t.peak_tflops)
    require(cfg.sample_tokens >= 1, "sample_tokens", "must be >= 1", cfg.sample_tokens)
    if t.precision == "fp16" and t.use_gpu == "false":
        raise ConfigError("train.precision: fp16 needs GPU workers (use bf16 on CPU), got 'fp16'")
    validate_distill(cfg.distill)
    validate_lora(cfg.lora)


def validate_lora(lora: AdapterConfig) -> None:
    require(lora.r >= 0, "lora.r", "must be >= 0 (0 = full fine-tuning)", lora.r)
    require(lora.lora_alpha > 0, "lora.lora_alpha", "must be > 0", lora.lora_alpha)
    require(0 <= lora.dropout < 1, "lora.dropout", "must be in [0, 1)", lora.dropout)
    require(bool(lora.targets) and all(lora.targets), "lora.targets", "needs module names or all-linear", lora.targets)


def validate_distill(d: DistillConfig) -> None:
    require(0 <= d.alpha <= 1, "distill.alpha", "must be in [0, 1]", d.alpha)
    require(math.isfinite(d.temperature) and d.temperature > 0, "distill.temperature", "must be > 0", d.temperature)
    require(d.student_layers >= 0, "distill.student_layers", "must be >= 0", d.student_layers)
    require(d.student_hidden_size >= 0, "distill.student_hidden_size", "must be >= 0", d.student_hidden_size)
    if not d.teacher:
        for key in ("student_layers", "student_hidden_size"):
            value = getattr(d, key)
            require(not value, f"distill.{key}", "needs distill.teacher (the model to derive the student from)", value)
    require(
        d.student_layers or not d.student_hidden_size,
        "distill.student_hidden_size",
        "needs distill.student_layers (the depth of the derived student)",
        d.student_hidden_size,
    )
