"""jobs/pipeline.py on tiny settings on the session's local Ray: every stage's artifacts, a report with the runs'
real numbers, an answering endpoint, finished stages skipped on re-run, a bad corpus stopping at the first stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml
from helpers import REPO

from minigpt_ray import cli
from minigpt_ray.cluster import free_port
from minigpt_ray.config import ConfigError
from minigpt_ray.pipeline.run import plan_pipeline, run_pipeline

pytestmark = pytest.mark.usefixtures("ray_cluster")
TRAIN = {
    "num_workers": 2,
    "micro_batch_size": 8,
    "warmup_steps": 1,
    "eval_every": 4,
    "eval_batches": 2,
    "checkpoint_every": 8,
    "log_every": 2,
}


def tiny_pipeline(output: Path, port: int, corpus: str = "shakespeare") -> dict:
    data = {"sources": [corpus], "max_chars_per_source": 100_000, "block_size": 64, "val_fraction": 0.05}
    return {
        "output": str(output),
        "stages": ["pretrain", "finetune", "sft", "sweep", "serve"],
        "prompts": ["ROMEO:"],
        "pretrain": {
            "sample_prompt": "",
            "model": {"name": "gpt-nano", "vocab_size": 512, "tokenizer_train_chars": 100_000},
            "data": data,
            "train": dict(TRAIN, max_steps=8, lr=3e-3),
        },
        # ZeRO-3 here: from_pretrained loads the pretrained directory straight into zero.Init partitions
        "finetune": {"sample_prompt": "", "data": data, "train": dict(TRAIN, max_steps=4, lr=1e-3, zero_stage=3)},
        "sft": {  # LoRA on the built-in chat set (the sft defaults) with a smaller rank and a slice of it
            "sample_prompt": "",
            "data": {"max_chars_per_source": 30_000, "block_size": 64, "val_fraction": 0.05},
            "lora": {"r": 4},
            "train": dict(TRAIN, max_steps=4, lr=1e-2),
        },
        "sweep": {
            "data": data,
            "measure": {"eval_blocks": 8, "calib_blocks": 4, "decode_tokens": 4},
            "search": {
                "algorithm": "grid",
                "methods": ["none"],
                "quants": ["none", "int8-weight"],
                "student_layers": [0, 2],  # and students of half the fine-tuned model's depth
                "distill_steps": [10],
            },
        },
        "serve": {"port": port, "app_name": "pipeline", "scaling": {"max_replicas": 1, "cpus_per_replica": 0.5}},
    }


def test_pipeline_end_to_end_then_rerun_skips_finished_stages(tmp_path, capsys):
    from ray import serve

    output = tmp_path / "pipeline"
    values = tiny_pipeline(output, free_port())
    try:
        state = run_pipeline(plan_pipeline(values))
        for path in (
            "pretrain/model/model.safetensors",
            "finetune/model/model.safetensors",
            "sweep/pareto.json",
            "sweep/winner/manifest.json",
            "report/report.md",
            "report/loss_pretrain.png",
            "report/loss_finetune.png",
            "report/pareto.png",
            "pipeline_state.json",
        ):
            assert (output / path).is_file(), path
        report = (output / "report" / "report.md").read_text()
        pretrain = json.loads((output / "pretrain" / "metrics.json").read_text())
        pareto = json.loads((output / "sweep" / "pareto.json").read_text())
        assert f"{pretrain['initial_val_loss']:.3f} → {pretrain['final_val_loss']:.3f}" in report
        finetune = json.loads((output / "finetune" / "metrics.json").read_text())
        # same corpus and split: a fine-tune that really loaded the weights starts where pretraining ended
        assert finetune["partitioned_at_construction"] and finetune["zero_stage"] == 3
        assert abs(finetune["initial_val_loss"] - pretrain["final_val_loss"]) < 0.05
        assert pareto["winner"]["label"] in report and f"{pareto['winner']['perplexity']:.3f}" in report
        url = state["stages"]["serve"]["url"]
        assert f"curl {url}/v1/completions" in report and "from openai import OpenAI" in report
        assert "| winner (compressed) | ROMEO: |" in report
        sft = json.loads((output / "sft" / "metrics.json").read_text())
        assert "- zh-instruct" in (output / "sft" / "run_config.yaml").read_text()  # the sft defaults
        assert sft["lora_r"] == 4 and sft["trainable_params"] < 0.2 * sft["params"]
        assert (output / "sft" / "adapter" / "adapter_config.json").is_file()
        assert "### Supervised fine-tuning on chat data" in report and "LoRA r=4:" in report
        assert "| SFT, as a chat reply | ROMEO: |" in report and f"curl {url}/v1/chat/completions" in report
        assert plan_pipeline(values).configs["sweep"].model == str(output / "sft" / "model")  # it compresses SFT
        chat = requests.post(
            f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "好吗"}], "max_tokens": 4}
        )
        assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
        student = min((r for r in pareto["trials"] if r.get("student_layers")), key=lambda r: r["served_perplexity"])
        assert f"The best student the sweep distilled from the fine-tuned model: **{student['label']}**" in report
        assert f"| student | {student['params']:,} |" in report and "| distilled student | ROMEO: |" in report
        reply = requests.post(f"{url}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 4}, timeout=60)
        assert reply.status_code == 200
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(values))
        capsys.readouterr()
        # the same output through the command: the three finished stages are not redone
        assert cli.main(["pipeline", "--config", str(tmp_path / "p.yaml"), "--no-block"]) == 0
        logged = capsys.readouterr().err
        for stage in ("pretrain", "finetune", "sft", "sweep"):
            assert f"pipeline: {stage} already finished" in logged
        assert json.loads((output / "pretrain" / "metrics.json").read_text()) == pretrain
    finally:
        serve.shutdown()


def test_bad_corpus_fails_before_any_stage_and_a_failing_stage_stops_the_pipeline(tmp_path, capsys):
    output = tmp_path / "bad"
    values = tiny_pipeline(output, free_port(), corpus=str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match=r"^pretrain\.data\.sources: .*missing\.txt"):
        plan_pipeline(values)  # every stage's corpus is checked before the first stage starts
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(values))
    capsys.readouterr()
    assert cli.main(["pipeline", "--config", str(tmp_path / "p.yaml"), "--no-block"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: pretrain.data.sources:") and "missing.txt" in err[0]
    assert not output.exists()
    # A corpus that exists but holds no text fails inside the first stage: nothing is written past it.
    (tmp_path / "empty.txt").write_text("\n\n")
    values = tiny_pipeline(output, free_port(), corpus=str(tmp_path / "empty.txt"))
    with pytest.raises(ConfigError, match=r"^data\.sources: .*empty\.txt is empty"):
        run_pipeline(plan_pipeline(values))
    assert not any((output / stage).exists() for stage in ("pretrain", "finetune", "sweep", "report"))


def test_bad_settings_are_named_with_their_stage_before_anything_runs(tmp_path):
    values = tiny_pipeline(tmp_path / "x", 8000)
    values["sweep"]["search"]["sparsities"] = [1.5]
    with pytest.raises(ConfigError, match=r"^sweep\.search\.sparsities: must be in \[0, 1\)"):
        plan_pipeline(values)
    values = tiny_pipeline(tmp_path / "x", 8000)
    values["finetune"]["train"]["zero_stage"] = 4
    with pytest.raises(ConfigError, match=r"^finetune\.train\.zero_stage: "):
        plan_pipeline(values)
    with pytest.raises(ConfigError, match=r"^stages: unknown stage 'deploy'"):
        plan_pipeline(tiny_pipeline(tmp_path / "x", 8000), stages=["deploy"])
    assert not (tmp_path / "x").exists()


def test_shipped_pipeline_and_sweep_configs_are_valid():
    from minigpt_ray.config import load_yaml, parse_args
    from minigpt_ray.config.sweep import SweepJobConfig

    plan = plan_pipeline(load_yaml(str(REPO / "configs" / "pipeline.yaml")))
    assert plan.stages == ["pretrain", "finetune", "sweep", "serve"]
    assert plan.configs["finetune"].model.name == str(Path("runs/pipeline/pretrain/model"))
    assert plan.configs["serve"].model == str(Path("runs/pipeline/sweep/winner"))
    sweep = parse_args(["--config", str(REPO / "configs" / "sweep.yaml")], "t", SweepJobConfig)
    assert sweep.search.algorithm == "optuna" and sweep.search.num_samples == 16
