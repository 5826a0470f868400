"""Real Ray Train + DeepSpeed runs on a local Ray (2 CPU workers, gloo) on a Shakespeare slice."""

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_run_config
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from minigpt_ray.config import ConfigError, to_yaml
from minigpt_ray.modeling.model import sample_text
from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.training.trainer import run_training

pytestmark = pytest.mark.cluster


def _state(output: Path) -> dict:
    return json.loads((_latest_checkpoint(output) / "trainer_state.json").read_text())


def _latest_checkpoint(output: Path) -> Path:
    folders = [p for p in (output / "checkpoints" / output.name).glob("checkpoint_*") if p.is_dir()]
    return max(folders, key=lambda p: p.stat().st_mtime)


def test_zero2_bf16_mixed_compiled_loss_goes_down_and_outputs_are_complete(ray_cluster, tmp_path):
    output = tmp_path / "z2"
    cfg = tiny_run_config(output, zero_stage=2, precision="bf16-mixed", compile=True)
    cfg.sample_prompt = "ROMEO."
    metrics = run_training(cfg)
    assert metrics["steps"] == 30
    assert metrics["fused_loss"] and metrics["compiled"]  # the chunked loss on a torch.compile'd decoder
    assert metrics["fused_optimizer"]  # DeepSpeed built torch's fused AdamW kernel from the config
    assert metrics["final_val_loss"] < metrics["initial_val_loss"] - 0.5
    assert metrics["tokens_per_s"] > 0 and 0 < metrics["mfu"] < 1
    assert metrics["steady_tokens_per_s"] > 0 and 0 <= metrics["steady_data_wait_fraction"] < 1
    on_disk = json.loads((output / "metrics.json").read_text())
    for key in ("initial_val_loss", "final_val_loss", "initial_val_ppl", "final_val_ppl", "steps", "tokens_per_s"):
        assert on_disk[key] == metrics[key]
    assert {p.name for p in (output / "model").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    # Drawn by rank 0 from the model in memory (its ids are in the final checkpoint; the driver loads no model):
    # the very sample the published model gives for the same seed.
    assert (_latest_checkpoint(output) / "sample_ids.json").is_file()
    published = AutoModelForCausalLM.from_pretrained(str(output / "model"))
    again = sample_text(published, load_tokenizer(str(output / "model")), "ROMEO.", cfg.sample_tokens, cfg.train.seed)
    assert metrics["sample"]["completion"] and metrics["sample"]["completion"] == again
    assert not list(output.glob(".model.*"))  # no staging directory left behind
    assert metrics["weight_decay_groups"] == [0.1, 0.0]  # DeepSpeed built AdamW with decay only on >= 2-D weights
    _check_tensorboard(output / "tensorboard", steps=30)
    phases = metrics["phase_seconds"]  # where the wall time went, every phase present and in order
    assert list(phases) == [
        "prepare", "checks", "workers_start", "engine_build", "first_eval", "training", "final_save", "finish"
    ]  # fmt: skip
    assert all(seconds >= 0 for seconds in phases.values()) and phases["training"] >= metrics["train_seconds"]
    assert metrics["fixed_seconds"] == pytest.approx(sum(phases.values()) - phases["training"], abs=0.1)


def _check_tensorboard(logdir: Path, steps: int) -> None:
    """Rank 0 wrote the live curves: training loss at every progress line, validation loss at every evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/loss", "val/perplexity"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Scalars("train/loss")][-1] == steps
    assert [e.step for e in events.Scalars("val/loss")] == [0, 15, 30]


def test_zero3_fp32_consolidated_model_matches_trained_weights(ray_cluster, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    output = tmp_path / "z3"
    metrics = run_training(
        tiny_run_config(
            output, zero_stage=3, precision="fp32", max_steps=16, eval_every=8, checkpoint_every=8, grad_accum_steps=2
        )
    )
    assert metrics["train_tokens"] == 16 * 2 * 2 * 8 * 64  # steps x accumulation x workers x batch x block
    assert metrics["final_val_loss"] < metrics["initial_val_loss"]
    model = AutoModelForCausalLM.from_pretrained(output / "model")
    tokenizer = AutoTokenizer.from_pretrained(output / "model")
    # The trained weights, read independently from the sharded ZeRO-3 checkpoint Ray Train merged from both ranks.
    trained = get_fp32_state_dict_from_zero_checkpoint(str(_latest_checkpoint(output)), tag="ds")
    reference = AutoModelForCausalLM.from_config(model.config)
    reference.load_state_dict(trained, strict=False)
    reference.tie_weights()
    ids = tokenizer("Good morrow, my lord.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5)
    assert metrics["partitioned_at_construction"]  # built inside zero.Init: no worker held the full model
    assert metrics["fused_optimizer"]  # also under ZeRO-3's partitioned fp32 optimizer state
    assert metrics["weight_decay_groups"] == [0.1, 0.0]  # the two groups survive ZeRO-3's partitioning
    # (loading a pretrained directory into ZeRO-3 partitions is checked by the pipeline test's fine-tune stage)


def test_resume_after_worker_crash_continues_then_rerun_resumes(ray_cluster, tmp_path, monkeypatch):
    output = tmp_path / "crash"
    cfg = tiny_run_config(output, zero_stage=1, precision="bf16", max_steps=12, checkpoint_every=4, eval_every=6)
    marker = tmp_path / "crashed"
    monkeypatch.setenv("MINIGPT_RAY_FAULT", f"crash-at-step:6:{marker}")
    metrics = run_training(cfg)
    assert marker.read_text() == "6"  # a worker really died at step 6
    state = _state(output)
    assert state["resumed_from"] == [4]  # the new worker group loaded the step-4 checkpoint
    assert metrics["steps"] == 12
    assert metrics["train_tokens"] == 12 * 2 * 8 * 64  # tokens counted once: continued, not restarted
    assert [h["step"] for h in metrics["history"]] == [0, 6, 12]
    assert metrics["history"][1]["val_loss"] < metrics["history"][0]["val_loss"]
    # Same run name again: it resumes from the final checkpoint, so nothing is retrained and no checkpoint added.
    checkpoints_before = sorted(p.name for p in (output / "checkpoints" / "crash").iterdir() if p.is_dir())
    monkeypatch.delenv("MINIGPT_RAY_FAULT")
    again = run_training(cfg)
    assert sorted(p.name for p in (output / "checkpoints" / "crash").iterdir() if p.is_dir()) == checkpoints_before
    assert (again["steps"], again["final_val_loss"]) == (12, metrics["final_val_loss"])
    # Another layout into the same output and run name: refused before any worker starts, nothing touched.
    cfg.train.zero_stage = 2
    with pytest.raises(ConfigError, match=r"^output: .* holds checkpoints of a different run \(zero_stage changed\)"):
        run_training(cfg)
    assert sorted(p.name for p in (output / "checkpoints" / "crash").iterdir() if p.is_dir()) == checkpoints_before


def test_finetune_gpt2_checkpoint_zero0_gradient_checkpointing(ray_cluster, tmp_path, shakespeare_text):
    from minigpt_ray.modeling.tokenizer import train_bpe

    base = tmp_path / "gpt2"
    tokenizer = train_bpe([shakespeare_text], 400)
    GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_head=2,
            n_embd=64,
            vocab_size=len(tokenizer),
            n_positions=128,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
    ).save_pretrained(base)
    tokenizer.save_pretrained(base)
    cfg = tiny_run_config(
        tmp_path / "ft", zero_stage=0, precision="bf16-mixed", max_steps=12, eval_every=6, checkpoint_every=12
    )
    cfg.model.name = str(base)
    cfg.model.gradient_checkpointing = True
    metrics = run_training(cfg)
    assert metrics["final_val_loss"] < metrics["initial_val_loss"]
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "ft" / "model")
    assert tuned.config.model_type == "gpt2"
    assert AutoTokenizer.from_pretrained(tmp_path / "ft" / "model").get_vocab() == tokenizer.get_vocab()


def test_more_workers_than_cluster_fails_before_start(ray_cluster, tmp_path):
    output = tmp_path / "big"
    with pytest.raises(ConfigError, match=r"^train.num_workers: 3 workers x 1 CPU need 3 CPUs, the cluster has 2"):
        run_training(tiny_run_config(output, num_workers=3))
    assert not output.exists()


@pytest.mark.parametrize(
    "settings, error",
    [
        # valid until use_gpu=auto resolves on the cluster
        ({"precision": "fp16", "use_gpu": "auto"}, r"^train.precision: fp16 needs GPU workers and use_gpu=auto runs"),
        ({"placement_strategy": "STRICT_SPREAD"}, r"^train.placement_strategy: STRICT_SPREAD needs 2 nodes with 1 CPU"),
    ],
)
def test_settings_the_cluster_cannot_honour_fail_before_start(ray_cluster, tmp_path, settings, error):
    output = tmp_path / "run"
    with pytest.raises(ConfigError, match=error):
        run_training(tiny_run_config(output, **settings))
    assert not output.exists()


def test_a_diverged_run_publishes_nothing_and_is_not_retried(ray_cluster, tmp_path, monkeypatch, capsys):
    from minigpt_ray import cli

    output = tmp_path / "nan"
    previous = output / "model"  # what an earlier run published: must survive
    previous.mkdir(parents=True)
    (previous / "config.json").write_text('{"from": "the earlier run"}')
    cfg = tiny_run_config(output, zero_stage=2, precision="fp32", max_steps=10, checkpoint_every=4, eval_every=5)
    (tmp_path / "nan.yaml").write_text(to_yaml(cfg))
    monkeypatch.setenv("MINIGPT_RAY_FAULT", "nan-at-step:5")  # step 5's gradients are NaN: weights follow
    capsys.readouterr()
    assert cli.main(["finetune", "--config", str(tmp_path / "nan.yaml")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "training diverged at step" in err[0] and "nothing published" in err[0], err
    assert (previous / "config.json").read_text() == '{"from": "the earlier run"}'
    assert not (output / "metrics.json").exists()
    state = _state(output)  # the last checkpoint is the step-4 one, from before the divergence
    assert state["step"] == 4 and state["resumed_from"] == []  # and Ray Train did not restart the workers


def test_chat_data_trains_and_evaluates_the_replies_only(ray_cluster, tmp_path):
    cfg = tiny_run_config(tmp_path / "sft", max_steps=12, eval_every=6, checkpoint_every=12, eval_batches=0)
    cfg.data.sources, cfg.data.max_chars_per_source = ["zh-instruct"], 60_000
    metrics = run_training(cfg.validate())
    blocks, block_size = metrics["data"]["blocks"]["val"], cfg.data.block_size
    first, last = metrics["history"][0], metrics["history"][-1]
    # Every validation block is evaluated, but only the assistant's tokens count (the prompts are masked).
    assert 0 < first["val_tokens"] == last["val_tokens"] < 0.5 * blocks * (block_size - 1)
    assert last["val_loss"] < first["val_loss"]
    tokenizer = load_tokenizer(str(tmp_path / "sft" / "model"))
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "这本书好吗？"}], tokenize=False, add_generation_prompt=True
    )  # the exported model carries the chat template it was trained with
