"""Settings of the Serve app (`minigpt serve`, `jobs/serve.py`, `serve run`/`serve deploy` via `app_builder`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from minigpt_ray.config.base import ConfigError, require
from minigpt_ray.config.bases import check_installed, is_base

GGUF_FILE = "model.gguf"
"""The GGUF file of an export directory or a sweep winner (served by llama.cpp)."""
RUNTIMES = ("auto", "torch", "llama.cpp")


@dataclass
class ReplicaScalingConfig:
    """How many replicas run and what each one reserves (Serve's autoscaling_config and actor options)."""

    min_replicas: int = 1
    """Fewest replicas kept running (0 allows scale to zero, paying a cold start)."""
    max_replicas: int = 2
    """Most replicas the autoscaler may start."""
    target_ongoing_requests: float = 4.0
    """Autoscaling target: in-flight requests per replica; more load than this adds replicas."""
    upscale_delay_s: float = 5.0
    """Seconds the load must stay above target before a replica is added."""
    downscale_delay_s: float = 30.0
    """Seconds the load must stay below target before a replica is removed."""
    metrics_window_s: float = 30.0
    """Seconds of request-count history the autoscaler averages over (Serve's look_back_period_s)."""
    max_ongoing_requests: int = 32
    """Requests one replica accepts at once (more wait in the proxy's queue)."""
    cpus_per_replica: float = 1.0
    """CPUs reserved per replica (also its torch threads, at least 1)."""
    gpus_per_replica: float = 0.0
    """GPUs per replica (the model moves to cuda when > 0)."""


@dataclass
class BatchingConfig:
    max_batch_size: int = 8
    """Most requests decoded together on a replica (1 = no batching). Batching is continuous: a request joins the
    running batch at the next decode step and leaves it as soon as it ends; beyond this many, requests queue."""
    continuous: bool = True
    """False = static batching: a batch decodes until its last request ends before queued requests start (short
    requests then wait for long batch-mates; bench/serve_load.py compares both)."""
    max_queued_requests: int = 64
    """Requests a replica holds waiting for a batch row (beyond its free rows); further ones are answered 503 with
    Retry-After (backpressure instead of an unbounded queue), so clients and load balancers can back off."""
    batch_wait_timeout_s: float = 0.0
    """When a replica is idle, how long the first request waits for others to share its prefill. Requests that
    arrive later join the running batch without waiting, so 0 (start at once) is right for most loads."""


@dataclass
class LimitsConfig:
    max_prompt_tokens: int = 512
    """Longest prompt accepted, in tokens."""
    prompt_overflow: str = "error"
    """Longer prompts: error (HTTP 400, code context_length_exceeded) or truncate-left (keep the last tokens)."""
    max_new_tokens: int = 256
    """Cap on a request's max_tokens (larger → HTTP 400)."""
    default_max_tokens: int = 16
    """max_tokens when a request gives none (OpenAI's default)."""
    max_body_bytes: int = 65536
    """Largest request body (larger → HTTP 413)."""
    request_timeout_s: float = 60.0
    """A non-streaming request running longer gets HTTP 504; a stream is ended with an error event."""
    ingress_timeout_s: int = 0
    """Backstop for a replica that stops answering (hung, not crashed): Serve's HTTP `request_timeout_s` (HTTP 408,
    plain text) and HAProxy's server inactivity timeout (HTTP 504). 0: request_timeout_s + 30 s."""

    def resolved_ingress_timeout_s(self) -> int:
        return self.ingress_timeout_s or math.ceil(self.request_timeout_s) + 30


@dataclass
class ServeJobConfig:
    """Settings of one served model: where it is, how it is reached, scaled, batched and limited."""

    model: str = "runs/sweep/winner"
    """Model directory to serve: a sweep candidate (winner/, any format), a `minigpt export` directory (model.gguf),
    a fine-tuned model/ or any HF causal LM directory with its tokenizer."""
    runtime: str = "auto"
    """Decode runtime: llama.cpp (the directory's model.gguf: exports and Llama-style sweep winners; a Llama-style
    PyTorch directory without one is converted to f16 GGUF when a replica starts), torch (the PyTorch model:
    config.json), or auto (llama.cpp when there is a model.gguf and replicas are CPU-only, else torch). /health
    reports which one runs."""
    model_name: str = "minigpt"
    """Model id listed by /v1/models; requests naming another model get HTTP 404."""
    host: str = "127.0.0.1"
    """Address the HTTP proxy binds (0.0.0.0 to accept other machines)."""
    port: int = 8000
    """HTTP port of the proxy."""
    app_name: str = "minigpt"
    """Serve application name (serve status, serve shutdown)."""
    route_prefix: str = "/"
    """URL prefix of the app's routes (/v1/completions lives under it); apps on one cluster need distinct ones."""
    ray_address: str = ""
    """Ray cluster to join (default: $RAY_ADDRESS as set by `ray job submit`, else an embedded local Ray)."""
    api_key: str = ""
    """When set (or $MINIGPT_API_KEY), every route but /health requires `Authorization: Bearer <key>` (401
    otherwise). Never printed or logged."""
    runs_dir: str = ""
    """Run directory whose results the browser page /runs shows: a pipeline output, a sweep output or a training
    output (what they wrote: pipeline_state.json, pareto.json, metrics.json). Default: found from `model` when it
    sits in a sweep output (winner/ beside pareto.json), else none."""
    scaling: ReplicaScalingConfig = field(default_factory=ReplicaScalingConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def validate(self) -> ServeJobConfig:
        validate_serve(self)
        check_serve_model(self)
        return self

    def resolved_api_key(self) -> str:
        """The key replicas check: the setting, else $MINIGPT_API_KEY, else "" (no key)."""
        import os

        return self.api_key or os.environ.get("MINIGPT_API_KEY", "")

    def resolved_runs_dir(self) -> str:
        """The runs page's directory: the setting, else the pipeline or sweep output `model` lies in, else ""."""
        if self.runs_dir:
            return self.runs_dir
        sweep = Path(self.model).resolve().parent
        if not (sweep / "pareto.json").is_file():
            return ""
        return str(sweep.parent if (sweep.parent / "pipeline_state.json").is_file() else sweep)


def serving_runtime(cfg: ServeJobConfig) -> str:
    """The runtime `cfg.runtime` resolves to for its model directory: "torch" or "llama.cpp"."""
    if cfg.runtime != "auto":
        return cfg.runtime
    has_gguf = (Path(cfg.model) / GGUF_FILE).is_file()
    return "llama.cpp" if has_gguf and cfg.scaling.gpus_per_replica == 0 else "torch"


def check_serve_model(cfg: ServeJobConfig) -> None:
    """The model directory holds what its runtime loads, and that runtime is installed."""
    import importlib.util

    directory = Path(cfg.model)
    if cfg.runs_dir and not Path(cfg.runs_dir).is_dir():
        raise ConfigError(f"runs_dir: directory {cfg.runs_dir} does not exist")
    if is_base(cfg.model):  # converted to a model directory where a replica loads it
        check_installed(cfg.model)
        if serving_runtime(cfg) == "llama.cpp" and importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError("runtime: llama.cpp needs llama-cpp-python (scripts/setup.sh builds it)")
        return
    if not directory.is_dir():
        raise ConfigError(f"model: directory {cfg.model} does not exist")
    if serving_runtime(cfg) == "torch":
        if (directory / "adapter_config.json").is_file() and not (directory / "config.json").is_file():
            _check_adapter(directory, cfg.model)
            return
        if not (directory / "config.json").is_file():
            has_gguf = (directory / GGUF_FILE).is_file()
            hint = f" (it has {GGUF_FILE}: serve it with runtime llama.cpp)" if has_gguf else ""
            raise ConfigError(f"model: {cfg.model} has no config.json (not a PyTorch model directory){hint}")
        return
    if not (directory / GGUF_FILE).is_file() and _model_type(directory) != "llama":
        raise ConfigError(
            f"model: {cfg.model} has no {GGUF_FILE} for runtime llama.cpp and is not a Llama-style model that "
            "replicas could convert (minigpt export writes one)"
        )
    if not (directory / "tokenizer.json").is_file():
        raise ConfigError(f"model: {cfg.model} has no tokenizer.json beside {GGUF_FILE}")
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(
            "runtime: llama.cpp needs llama-cpp-python (scripts/setup.sh builds it; or pip install '.[llama]'); "
            "runtime torch serves the PyTorch model instead"
        )


def _check_adapter(directory: Path, name: str) -> None:
    """A LoRA adapter directory is served on its base model, which must be a model directory here."""
    import json

    base = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise ConfigError(f"model: the adapter {name} names base model {base!r}, which is not a model directory")


def _model_type(directory: Path) -> str:
    import json

    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, ValueError):
        return ""


def check_model_dir(model: str) -> None:
    """A model directory with a config.json, or an installed named base."""
    if is_base(model):
        check_installed(model)
        return
    directory = Path(model)
    if not directory.is_dir():
        raise ConfigError(f"model: directory {model} does not exist")
    if not (directory / "config.json").is_file():
        raise ConfigError(f"model: {model} has no config.json (not a model directory)")


def validate_serve(cfg: ServeJobConfig) -> None:
    """Every setting but the model directory (which a pipeline creates in an earlier stage)."""
    s, b, lim = cfg.scaling, cfg.batching, cfg.limits
    require(bool(cfg.model.strip()), "model", "must name a model directory", cfg.model)
    require(bool(cfg.model_name.strip()), "model_name", "must not be empty", cfg.model_name)
    require(cfg.runtime in RUNTIMES, "runtime", f"must be one of {', '.join(RUNTIMES)}", cfg.runtime)
    require(
        cfg.runtime != "llama.cpp" or s.gpus_per_replica == 0,
        "runtime",
        "llama.cpp replicas run on CPUs (scaling.gpus_per_replica must be 0; use torch on GPUs)",
        cfg.runtime,
    )
    require(1 <= cfg.port <= 65535, "port", "must be in [1, 65535]", cfg.port)
    require(s.min_replicas >= 0, "scaling.min_replicas", "must be >= 0", s.min_replicas)
    require(
        s.max_replicas >= max(1, s.min_replicas),
        "scaling.max_replicas",
        "must be >= max(1, min_replicas)",
        s.max_replicas,
    )
    require(s.target_ongoing_requests > 0, "scaling.target_ongoing_requests", "must be > 0", s.target_ongoing_requests)
    require(s.upscale_delay_s >= 0, "scaling.upscale_delay_s", "must be >= 0", s.upscale_delay_s)
    require(s.metrics_window_s > 0, "scaling.metrics_window_s", "must be > 0", s.metrics_window_s)
    require(cfg.route_prefix.startswith("/"), "route_prefix", "must start with /", cfg.route_prefix)
    require(s.downscale_delay_s >= 0, "scaling.downscale_delay_s", "must be >= 0", s.downscale_delay_s)
    require(s.max_ongoing_requests >= 1, "scaling.max_ongoing_requests", "must be >= 1", s.max_ongoing_requests)
    require(s.cpus_per_replica >= 0, "scaling.cpus_per_replica", "must be >= 0", s.cpus_per_replica)
    require(s.gpus_per_replica >= 0, "scaling.gpus_per_replica", "must be >= 0", s.gpus_per_replica)
    require(b.max_batch_size >= 1, "batching.max_batch_size", "must be >= 1", b.max_batch_size)
    require(b.max_queued_requests >= 1, "batching.max_queued_requests", "must be >= 1", b.max_queued_requests)
    require(b.batch_wait_timeout_s >= 0, "batching.batch_wait_timeout_s", "must be >= 0", b.batch_wait_timeout_s)
    require(lim.max_prompt_tokens >= 1, "limits.max_prompt_tokens", "must be >= 1", lim.max_prompt_tokens)
    require(
        lim.prompt_overflow in ("error", "truncate-left"),
        "limits.prompt_overflow",
        "must be error or truncate-left",
        lim.prompt_overflow,
    )
    require(lim.max_new_tokens >= 1, "limits.max_new_tokens", "must be >= 1", lim.max_new_tokens)
    require(
        1 <= lim.default_max_tokens <= lim.max_new_tokens,
        "limits.default_max_tokens",
        "must be in [1, max_new_tokens]",
        lim.default_max_tokens,
    )
    require(lim.max_body_bytes >= 1024, "limits.max_body_bytes", "must be >= 1024", lim.max_body_bytes)
    require(lim.request_timeout_s > 0, "limits.request_timeout_s", "must be > 0", lim.request_timeout_s)
    require(
        lim.ingress_timeout_s == 0 or lim.ingress_timeout_s > lim.request_timeout_s,
        "limits.ingress_timeout_s",
        "must be 0 (auto) or longer than limits.request_timeout_s",
        lim.ingress_timeout_s,
    )
