"""Corpus → tokenizer → pretrain → fine-tune → compression sweep → serve the winner → report, as one Ray job.

Each stage is the library call its own job makes (run_training, run_sweep, deploy), with its typed config taken
from one section of the pipeline YAML; a stage's model defaults to the previous stage's output. Every section is
validated before the first stage starts. Finished stages are recorded in <output>/pipeline_state.json and skipped
when the pipeline is re-run with the same output directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from minigpt_ray.config import ConfigError, ServeJobConfig, SweepJobConfig, TrainJobConfig, from_dict, to_yaml
from minigpt_ray.config.serve import check_serve_model, serving_runtime, validate_serve
from minigpt_ray.data.corpora import check_sources
from minigpt_ray.logs import get_logger
from minigpt_ray.outputs import atomic_write_text

log = get_logger()

STAGES = ("pretrain", "finetune", "sft", "sweep", "serve")
DEFAULT_STAGES = ("pretrain", "finetune", "sweep", "serve")
"""`sft` (LoRA on chat data) runs when asked for: `stages: [pretrain, finetune, sft, sweep, serve]`."""
TRAINING_STAGES = ("pretrain", "finetune", "sft")
SFT_DEFAULTS = {"data": {"sources": ["zh-instruct"]}, "lora": {"r": 16}}
"""What the sft section starts from (its own settings override): the built-in chat set, LoRA rank 16."""
STATE_FILE = "pipeline_state.json"
DONE_MARKERS = {
    "pretrain": "model/config.json",
    "finetune": "model/config.json",
    "sft": "model/config.json",
    "sweep": "winner/manifest.json",
}


@dataclass
class PipelinePlan:
    output: Path
    stages: list[str]
    configs: dict
    prompts: list[str]
    chat_prompts: list[str] = field(default_factory=list)
    """User messages every model with a chat template answers in the report (greedy)."""
    digests: dict = field(default_factory=dict)
    """Per stage: a hash of its settings and of every stage before it. A finished stage whose digest changed runs
    again (and so does everything after it); training stages name their run by it, so checkpoints of other
    settings are never resumed."""


def _settings_digest(cfg, upstream: str) -> str:
    plain = dataclasses.replace(cfg, run_name="") if isinstance(cfg, TrainJobConfig) else cfg
    return hashlib.sha256((upstream + to_yaml(plain)).encode()).hexdigest()[:16]


def _chain_digests(configs: dict, stages: list[str]) -> dict:
    digests, upstream = {}, ""
    for stage in STAGES:
        if stage == "sft" and stage not in stages:  # an sft section that does not run changes nothing downstream
            continue
        digests[stage] = upstream = _settings_digest(configs[stage], upstream)
        if isinstance(configs[stage], TrainJobConfig) and not configs[stage].run_name:
            configs[stage].run_name = f"{stage}-{upstream[:8]}"
    return digests


def plan_pipeline(values: dict, output: str = "", stages: list[str] | None = None) -> PipelinePlan:
    """Typed, validated configs for every stage (nothing runs, nothing is written)."""
    output = Path(output or values.get("output") or "runs/pipeline")
    unknown = set(values) - {"output", "stages", "prompts", "chat_prompts", *STAGES}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown setting (sections: {', '.join(STAGES)})")
    stages = list(stages or values.get("stages") or DEFAULT_STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"stages: unknown stage {bad[0]!r} (stages: {', '.join(STAGES)})")
    models = {
        "pretrain": None,
        "finetune": output / "pretrain" / "model",
        "sft": output / "finetune" / "model",
        "sweep": output / ("sft" if "sft" in stages else "finetune") / "model",
        "serve": output / "sweep" / "winner",
    }
    configs = {}
    job_configs = (
        ("pretrain", TrainJobConfig),
        ("finetune", TrainJobConfig),
        ("sft", TrainJobConfig),
        ("sweep", SweepJobConfig),
        ("serve", ServeJobConfig),
    )
    for stage, cls in job_configs:
        section = values.get(stage) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{stage}: expected a mapping of settings")
        if stage == "sft":
            section = _with_defaults(section, SFT_DEFAULTS)
        cfg = _stage_config(stage, section, cls)
        if cls is not ServeJobConfig:
            cfg.output = str(output / stage)
        elif "runs_dir" not in section:  # the served app's /runs page shows this pipeline
            cfg.runs_dir = str(output)
        default_model = models[stage]
        if default_model is not None and not _model_given(stage, section):
            _set_model(cfg, str(default_model))
        try:
            validate_serve(cfg) if cls is ServeJobConfig else cfg.validate()
            if cls is not ServeJobConfig:  # a mistyped corpus fails now, not after the stages before it ran
                check_sources(cfg.data.sources)
        except ConfigError as err:
            raise ConfigError(f"{stage}.{err}") from None
        configs[stage] = cfg
    digests = _chain_digests(configs, stages)
    prompts, chat_prompts = list(values.get("prompts") or ["今天天气"]), list(values.get("chat_prompts") or [])
    return PipelinePlan(output, stages, configs, prompts, chat_prompts, digests)


def _with_defaults(section: dict, defaults: dict) -> dict:
    """`section` over `defaults`, one level of sub-sections deep."""
    merged = dict(section)
    for key, value in defaults.items():
        given = section.get(key)
        merged[key] = value | given if isinstance(given, dict) else (value if given is None else given)
    return merged


def _stage_config(stage: str, section: dict, cls):
    try:
        return from_dict(section, cls)
    except ConfigError as err:
        raise ConfigError(f"{stage}.{err}") from None


def _model_given(stage: str, section: dict) -> bool:
    return "name" in (section.get("model") or {}) if stage in TRAINING_STAGES else "model" in section


def _set_model(cfg, model: str) -> None:
    if isinstance(cfg, TrainJobConfig):
        cfg.model.name = model
    else:
        cfg.model = model


def _resources(stage: str, cfg) -> str:
    if stage in TRAINING_STAGES:
        t = cfg.train
        return f"{t.num_workers} workers × {t.cpus_per_worker:g} CPU, ZeRO-{t.zero_stage}, {t.precision}"
    if stage == "sweep":
        from minigpt_ray.sweep.prepare import grid_specs

        s = cfg.search
        trials = len(grid_specs(cfg)) if s.algorithm == "grid" else s.num_samples
        return f"{s.algorithm}, {trials} trials, {s.max_concurrent} × {s.cpus_per_trial:g} CPU"
    s = cfg.scaling
    return f"{s.min_replicas}-{s.max_replicas} replicas × {s.cpus_per_replica:g} CPU"


def _load_state(output: Path) -> dict:
    path = output / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"stages": {}}


def _finished(plan: PipelinePlan, state: dict, stage: str) -> bool:
    """Done with these settings (a state written before digests existed counts as matching)."""
    marker = DONE_MARKERS.get(stage)
    if stage not in state["stages"] or marker is None or not (plan.output / stage / marker).is_file():
        return False
    return state["stages"][stage].get("settings", plan.digests.get(stage)) == plan.digests.get(stage)


def _run_stage(stage: str, cfg) -> tuple[str, dict]:
    """Run one stage; returns (one-line result, extra state)."""
    if stage in TRAINING_STAGES:
        from minigpt_ray.training.trainer import run_training

        m = run_training(cfg)
        return (
            f"val loss {m['initial_val_loss']:.3f} → {m['final_val_loss']:.3f} in {m['steps']} steps, "
            f"{m['tokens_per_s']:,.0f} tokens/s"
        ), {}
    if stage == "sweep":
        from minigpt_ray.sweep.tuner import run_sweep

        r = run_sweep(cfg)
        w = r["winner"]
        return (
            f"{len(r['rows']) - 1} trials, front of {len(r['front'])}; winner {w['label']} as served by "
            f"{w['served_runtime']}: ppl {w['served_perplexity']:.3f} ({w['served_ppl_ratio']:.3f}×), "
            f"{w['served_mb']:.3f} MB ({w['served_bytes_ratio']:.3f}×), {w['served_tokens_per_s']:,.0f} decode "
            f"tokens/s ({w['served_decode_ratio']:.1f}×)"
        ), {}
    from minigpt_ray.serving.app import deploy

    check_serve_model(cfg)
    url = deploy(cfg)
    runtime = serving_runtime(cfg)
    summary = f"serving {cfg.model_name!r} ({runtime}) at {url}/v1/completions, playground at {url}/"
    return summary, {"url": url, "runtime": runtime}


def run_pipeline(plan: PipelinePlan) -> dict:
    """Run the planned stages in order (skipping finished ones), then write the report. Returns the state."""
    plan.output.mkdir(parents=True, exist_ok=True)
    state = _load_state(plan.output)
    upstream_ran = False  # a stage that runs again invalidates every stage after it
    for stage in plan.stages:
        if stage != "serve" and not upstream_ran and _finished(plan, state, stage):
            log.info("pipeline: %s already finished (%s); skipped", stage, state["stages"][stage]["result"])
            continue
        upstream_ran = stage != "serve"
        log.info("pipeline: stage %s starting", stage)
        started = time.time()
        result, extra = _run_stage(stage, plan.configs[stage])
        state["stages"][stage] = {
            "seconds": time.time() - started,
            "resources": _resources(stage, plan.configs[stage]),
            "result": result,
            "settings": plan.digests.get(stage),
            **extra,
        }
        atomic_write_text(plan.output / STATE_FILE, json.dumps(state, indent=2, ensure_ascii=False) + "\n")
        log.info("pipeline: %s done in %.0f s: %s", stage, state["stages"][stage]["seconds"], result)
    endpoint = None
    if "serve" in plan.stages:
        serve_cfg = plan.configs["serve"]
        endpoint = {
            "url": state["stages"]["serve"]["url"],
            "model_name": serve_cfg.model_name,
            "prompt": plan.prompts[0],
        }
    state["report"] = str(write_pipeline_report(plan, state, endpoint))
    return state


def _samples(plan: PipelinePlan) -> dict[str, dict[str, str]]:
    from minigpt_ray.compress.artifact import load_model_dir
    from minigpt_ray.modeling.model import local_model_dir, sample_text

    samples = {}
    first = plan.configs["finetune"].model.name  # the fine-tune's model when no pretrain stage made one
    base = plan.output / "pretrain" / "model" if "pretrain" in plan.stages else Path(local_model_dir(first))
    for label, directory in (
        ("base (pretrained)", base),
        ("fine-tuned", plan.output / "finetune" / "model"),
        ("distilled student", _student_dir(plan.output / "sweep" / "pareto.json")),
        ("winner (compressed)", plan.output / "sweep" / "winner"),
    ):
        if directory is not None and (directory / "config.json").is_file():
            model, tokenizer = load_model_dir(directory)
            samples[label] = {p: sample_text(model, tokenizer, p, 32, seed=1234) for p in plan.prompts}
            if getattr(tokenizer, "chat_template", None):  # a chat model answers the same questions
                samples[label] |= {f"chat: {q}": chat_reply(model, tokenizer, q, 32) for q in plan.chat_prompts}
    if (plan.output / "sft" / "model" / "config.json").is_file():  # the chat model answers messages
        model, tokenizer = load_model_dir(plan.output / "sft" / "model")
        samples["SFT, as a chat reply"] = {
            p: sample_text(model, tokenizer, _chat_prompt(tokenizer, p), 32, seed=1234) for p in plan.prompts
        }
    return samples


def chat_reply(model, tokenizer, user_message: str, max_new_tokens: int) -> str:
    """The greedy reply to one user message, through the model's chat template, up to its end-of-turn token."""
    import torch

    ids = tokenizer(_chat_prompt(tokenizer, user_message), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _chat_prompt(tokenizer, user_message: str) -> str:
    messages = [{"role": "user", "content": user_message}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _student_dir(pareto_file: Path) -> Path | None:
    """The artifact of the sweep's best distilled student (in Tune's results), if it trained one."""
    from minigpt_ray.sweep.pareto import best_student

    if not pareto_file.is_file():
        return None
    student = best_student(json.loads(pareto_file.read_text(encoding="utf-8"))["trials"])
    return Path(student["artifact"]) if student else None


def write_pipeline_report(plan: PipelinePlan, state: dict, endpoint: dict | None) -> Path:
    from minigpt_ray.pipeline.report import write_report

    state["samples"] = _samples(plan)  # kept in the state: the served /runs page shows them too
    atomic_write_text(plan.output / STATE_FILE, json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    return write_report(plan.output, state, state["samples"], endpoint)
