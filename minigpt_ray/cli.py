"""The `minigpt` command: parse a job's settings → call its one orchestration function → say where the outputs are.

`minigpt finetune|sweep|serve|pipeline [--config FILE] [--<setting> VALUE ...]`; `jobs/*.py` call the same entry
point, so `ray job submit -- python jobs/finetune.py ...` and `minigpt finetune ...` are one program. Bad settings
end in one line on stderr naming the field or file and exit code 2, before Ray starts or anything is written.
Progress and results go through `logging.getLogger("minigpt_ray")` (stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable

from minigpt_ray.config import (
    ConfigError,
    ExportJobConfig,
    ServeJobConfig,
    SweepJobConfig,
    TrainJobConfig,
    load_yaml,
    to_yaml,
)
from minigpt_ray.config.base import add_config_arguments, config_from_args
from minigpt_ray.logs import configure_logging, get_logger

log = get_logger()

DESCRIPTION = """Train, fine-tune, compress and serve a small GPT as Ray jobs. `minigpt <job> --help` lists a job's
settings; `jobs/<job>.py` is the same program for `ray job submit`."""

FINETUNE_DOC = """Pretrain or fine-tune a GPT with Ray Train + DeepSpeed ZeRO.

  minigpt finetune --config configs/pretrain.yaml                           # embedded local Ray
  ray job submit --working-dir . -- python jobs/finetune.py --config ... --output /shared/runs/ft   # on a cluster

On a cluster --output must be absolute, on storage every node shares. Outputs under --output: model/ (HF
directory), metrics.json, run_config.yaml, tokenizer/, checkpoints/, tensorboard/ (`tensorboard --logdir
<output>/tensorboard`)."""

SWEEP_DOC = """Compress a fine-tuned model: a Ray Tune sweep over pruning and quantization, the Pareto front, a winner.

  minigpt sweep --model runs/finetune/model --data zh-reviews                # embedded local Ray
  ray job submit --working-dir . -- python jobs/sweep.py --config configs/sweep.yaml --output /shared/runs/sweep

Outputs under --output: pareto.csv, pareto.json, pareto.png, summary.md, trials.csv, baseline/, winner/ (the
chosen candidate, loadable with minigpt_ray.compress.load_candidate, with model.gguf beside it for Llama-style
models: what `minigpt serve` runs in llama.cpp), tune/ (Tune's results and TensorBoard logs).
Exit status: 0 with a winner, 2 on a bad setting, 3 when no candidate meets the winner constraint."""

SERVE_DOC = """Serve a model directory as an OpenAI-compatible, autoscaling HTTP endpoint with Ray Serve.

  minigpt serve --model runs/sweep/winner                               # embedded Ray: serves until Ctrl-C
  ray job submit --working-dir . -- python jobs/serve.py --model /shared/runs/sweep/winner   # deploys and exits

Then: curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "minigpt", "prompt": "今天天气", "max_tokens": 32}'
      a browser at http://127.0.0.1:8000/ (playground) and /runs (Pareto front, loss curves, samples)
      serve status          # replicas and health;   serve shutdown -y   # remove the app"""

EXPORT_DOC = """Export a model directory to GGUF for llama.cpp, Ollama and other GGUF runtimes.

  minigpt export --model runs/sweep/winner --quant auto --output runs/export    # int4 winner → Q4_1, bit for bit
  minigpt export --model runs/finetune/model --quant q8_0 --output runs/export_q8

Llama-style models (the presets and HF Llama directories); the tokenizer is embedded so llama.cpp tokenizes
exactly as the model was trained. Output: <output>/model.gguf, then e.g. `llama-cli -m <output>/model.gguf`."""

PIPELINE_DOC = """One command from corpus to served model: pretrain → fine-tune → sweep → serve the winner → report.

  minigpt pipeline --config configs/pipeline.yaml                       # embedded Ray; serves until Ctrl-C
  minigpt pipeline --config configs/pipeline.yaml --stages pretrain,finetune   # some stages only
  ray job submit --working-dir . -- python jobs/pipeline.py --config configs/pipeline.yaml --output /shared/runs/p

Each section of the YAML (pretrain, finetune, sweep, serve) holds the settings of that stage's own job; a stage's
model defaults to the previous stage's output. Re-running with the same --output skips finished stages.
Report: <output>/report/report.md."""

INGRESS = {
    "haproxy": "HAProxy -> replicas",
    "proxy": "Serve proxy (start Ray with RAY_SERVE_ENABLE_HA_PROXY=1 for HAProxy ingress, less overhead per request)",
}


def run_finetune(cfg: TrainJobConfig) -> int:
    import time

    from minigpt_ray.training.startup import prepare_while_ray_starts  # late: --help stays instant

    started = time.time()
    prepared = prepare_while_ray_starts(cfg)  # the training stack imports and the data prepares beside Ray's start
    from minigpt_ray.training.trainer import TrainingDiverged, run_prepared

    try:
        m = run_prepared(prepared, started)
    except TrainingDiverged as err:
        print(f"error: {err}; nothing published under {cfg.output}/model", file=sys.stderr)
        return 1
    log.info(
        "val loss %.3f -> %.3f (ppl %.1f -> %.1f) in %d steps, %s tokens/s",
        m["initial_val_loss"],
        m["final_val_loss"],
        m["initial_val_ppl"],
        m["final_val_ppl"],
        m["steps"],
        f"{m['tokens_per_s']:,.0f}",
    )
    if "sample" in m:
        log.info("sample: %s%s", m["sample"]["prompt"], m["sample"]["completion"])
    log.info(
        "model: %s/model  metrics: %s/metrics.json  curves: tensorboard --logdir %s/tensorboard",
        cfg.output,
        cfg.output,
        cfg.output,
    )
    return 0


def run_sweep_job(cfg: SweepJobConfig) -> int:
    from minigpt_ray.sweep.pareto import NoWinnerError
    from minigpt_ray.sweep.tuner import run_sweep

    try:
        run_sweep(cfg)
    except NoWinnerError as err:
        print(f"error: {err}", file=sys.stderr)
        log.info("reports (no winner): %s/summary.md", cfg.output)
        return 3
    log.info("winner: %s/winner  front: %s/pareto.csv  plot: %s/pareto.png", cfg.output, cfg.output, cfg.output)
    return 0


def on_cluster(ray_address: str) -> bool:
    """Joined a running cluster (its apps outlive this process) rather than an embedded Ray."""
    return bool(ray_address or os.environ.get("RAY_ADDRESS"))


def run_serve(cfg: ServeJobConfig) -> int:
    from minigpt_ray.serving.app import cluster_ingress_mode, deploy, serve_until_interrupted

    url = deploy(cfg)
    s = cfg.scaling
    log.info(
        "serving %s as %r at %s/v1/completions (app %r, %d-%d replicas, ingress: %s)",
        cfg.model,
        cfg.model_name,
        url,
        cfg.app_name,
        s.min_replicas,
        s.max_replicas,
        INGRESS[cluster_ingress_mode()],
    )
    log.info(
        "try: curl %s/v1/completions -H 'Content-Type: application/json' "
        '-d \'{"prompt": "今天天气", "max_tokens": 32}\'',
        url,
    )
    log.info("playground: %s/ in a browser (the runs page: %s/runs)", url, url)
    if on_cluster(cfg.ray_address):
        log.info("deployed on the cluster; `serve status` shows it, `serve shutdown -y` removes it")
        return 0
    serve_until_interrupted()  # embedded Ray: the app lives as long as this process
    return 0


def run_export(cfg: ExportJobConfig) -> int:
    from minigpt_ray.export import export_gguf

    path = export_gguf(cfg.model, cfg.output, cfg.quant)
    log.info("wrote %s (%s bytes)", path, f"{path.stat().st_size:,}")
    return 0


def run_pipeline_job(args: argparse.Namespace) -> int:
    from minigpt_ray.pipeline.run import plan_pipeline, run_pipeline

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] or None
    plan = plan_pipeline(load_yaml(args.config), args.output, stages)
    if args.print_config:
        print(
            to_yaml_sections(
                {"output": str(plan.output), "stages": plan.stages, "prompts": plan.prompts, **plan.configs}
            )
        )
        return 0
    from minigpt_ray.sweep.pareto import NoWinnerError
    from minigpt_ray.training.trainer import TrainingDiverged

    try:
        state = run_pipeline(plan)
    except NoWinnerError as err:  # the sweep wrote its reports; nothing is served from an older sweep
        print(f"error: sweep.{err}", file=sys.stderr)
        return 3
    except TrainingDiverged as err:
        print(f"error: {err}; the stages after it did not run", file=sys.stderr)
        return 1
    log.info("report: %s", state["report"])
    if "serve" not in plan.stages:
        return 0
    url = state["stages"]["serve"]["url"]
    log.info("endpoint up: %s/v1/completions; playground: %s/ (in a browser; the runs at %s/runs)", url, url, url)
    if args.no_block or on_cluster(plan.configs["serve"].ray_address):
        return 0
    from minigpt_ray.serving.app import serve_until_interrupted

    log.info("serving until Ctrl-C")
    serve_until_interrupted()
    return 0


def to_yaml_sections(values: dict) -> str:
    import yaml

    from minigpt_ray.config.base import masked_secrets

    plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in values.items()}
    return yaml.safe_dump(masked_secrets(plain), allow_unicode=True, sort_keys=False)


JOBS: dict[str, tuple[type, str, Callable]] = {
    "finetune": (TrainJobConfig, FINETUNE_DOC, run_finetune),
    "sweep": (SweepJobConfig, SWEEP_DOC, run_sweep_job),
    "serve": (ServeJobConfig, SERVE_DOC, run_serve),
    "export": (ExportJobConfig, EXPORT_DOC, run_export),
}


MODELS_DOC = """List the models a job can start from: named pretrained bases (shipped in registry packages) and presets.

  minigpt models
  minigpt finetune --model smollm2-135m-instruct --data shakespeare --lora-r 16"""


def run_models() -> int:
    from minigpt_ray.config.bases import BASES, DEFAULT_BASE
    from minigpt_ray.modeling.model import PRESETS

    print("pretrained bases (--model NAME; converted once to a Hugging Face directory in the cache):")
    for base in BASES.values():
        state = "installed" if base.installed() else f"not installed: {base.install_command}"
        default = ", the quickstart's" if base.name == DEFAULT_BASE else ""
        print(
            f"  {base.name:24} {base.params:>5}  {base.download_mb} MB to install  {base.license}{default}  [{state}]"
        )
        print(f"  {'':24} {base.summary}")
    print("presets (random init: pretraining from scratch, tokenizer trained for the run):")
    for name, shape in PRESETS.items():
        print(f"  {name:24} {shape['num_hidden_layers']} layers × {shape['hidden_size']}, vocab {shape['vocab_size']}")
    print("or any Hugging Face model directory (or hub id) with a config.json and a tokenizer")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minigpt", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{finetune,sweep,serve,export,pipeline,models}"
    )
    for name, (root, doc, _) in JOBS.items():
        sub = commands.add_parser(
            name, help=doc.splitlines()[0], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        add_config_arguments(sub, root)
    pipeline = commands.add_parser(
        "pipeline",
        help=PIPELINE_DOC.splitlines()[0],
        description=PIPELINE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pipeline.add_argument("--config", default="configs/pipeline.yaml", help="pipeline YAML (sections per stage)")
    pipeline.add_argument("--output", default="", help="output directory (default: the YAML's output)")
    pipeline.add_argument(
        "--stages",
        default="",
        help="comma-separated stages from pretrain,finetune,sft,sweep,serve (default: the YAML's, else all but sft)",
    )
    pipeline.add_argument(
        "--no-block",
        action="store_true",
        help="return after the report instead of serving "
        "until Ctrl-C (an embedded Ray's endpoint stops with the process)",
    )
    pipeline.add_argument(
        "--print-config", action="store_true", help="print every stage's resolved settings as YAML and exit"
    )
    commands.add_parser(
        "models",
        help=MODELS_DOC.splitlines()[0],
        description=MODELS_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        if args.command == "pipeline":
            return run_pipeline_job(args)
        if args.command == "models":
            return run_models()
        root, _, run = JOBS[args.command]
        cfg = config_from_args(args, root)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        return run(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
