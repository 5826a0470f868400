import dataclasses

import pytest

from minigpt_ray.config import (
    ConfigError,
    ServeJobConfig,
    SweepJobConfig,
    TrainJobConfig,
    from_dict,
    parse_args,
    to_yaml,
)
from minigpt_ray.config.base import _sections, build_parser, field_docs


def test_defaults_validate():
    TrainJobConfig().validate()


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--zero-stage", "4"], "train.zero_stage"),
        (["--lr", "0"], "train.lr"),
        (["--lr=-1e-3"], "train.lr"),
        (["--micro-batch-size", "0"], "train.micro_batch_size"),
        (["--num-workers", "0"], "train.num_workers"),
        (["--precision", "fp8"], "train.precision"),
        (["--val-fraction", "1.5"], "data.val_fraction"),
        (["--block-size", "2"], "data.block_size"),
        (["--warmup-steps", "300", "--max-steps", "200"], "train.warmup_steps"),
        (["--precision", "fp16", "--use-gpu", "false"], "train.precision"),
        (["--txt-split", "sentence"], "data.txt_split"),
        (["--output", "s3://bucket/run"], "output"),
        (["--compile", "true", "--zero-stage", "3"], "train.compile"),
        (["--placement-strategy", "spread"], "train.placement_strategy"),
    ],
)
def test_invalid_values_name_the_field(argv, field):
    with pytest.raises(ConfigError) as err:
        parse_args(argv, "test", TrainJobConfig)
    assert str(err.value).startswith(field + ":")
    assert "\n" not in str(err.value)


def test_yaml_then_cli_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "output: /tmp/x\nmodel: {name: gpt-mini}\ntrain: {lr: 0.002, zero_stage: 3}\n"
        "data: {sources: [shakespeare, zh-news]}\n"
    )
    cfg = parse_args(["--config", str(path), "--zero-stage", "1", "--data", "zh-reviews,a.txt"], "t", TrainJobConfig)
    assert cfg.model.name == "gpt-mini"
    assert cfg.train.lr == 0.002  # from YAML
    assert cfg.train.zero_stage == 1  # CLI wins over YAML
    assert cfg.data.sources == ["zh-reviews", "a.txt"]
    assert cfg.output == "/tmp/x"


def test_yaml_unknown_key_and_wrong_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"^train.learning_rate: unknown setting"):
        parse_args(["--config", str(path)], "t", TrainJobConfig)
    with pytest.raises(ConfigError, match=r"^train.max_steps: expected int"):
        from_dict({"train": {"max_steps": "many"}}, TrainJobConfig)
    with pytest.raises(ConfigError, match=r"^--config: file not found"):
        parse_args(["--config", str(tmp_path / "missing.yaml")], "t", TrainJobConfig)


@pytest.mark.parametrize("root", [TrainJobConfig, SweepJobConfig, ServeJobConfig])
def test_every_field_of_every_job_has_a_docstring_and_the_yaml_round_trips(root):
    sections = _sections(root)
    for cls in [root, *sections.values()]:
        docs = field_docs(cls)
        for name in (f.name for f in dataclasses.fields(cls)):
            if name in sections:
                continue
            assert docs.get(name), f"{cls.__name__}.{name} has no docstring"
    import yaml

    cfg = root()
    assert from_dict(yaml.safe_load(to_yaml(cfg)), root) == cfg  # --print-config output is a valid --config file


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 1e-3, weight_decay: 0}\n")  # YAML 1.1 reads 1e-3 (no dot) as a string
    cfg = parse_args(["--config", str(path)], "t", TrainJobConfig)
    assert cfg.train.lr == 0.001 and cfg.train.weight_decay == 0.0
    path.write_text("train: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"^train.lr: expected float, got 'fast'"):
        parse_args(["--config", str(path)], "t", TrainJobConfig)


def test_training_flags_are_documented():
    help_text = build_parser("t", TrainJobConfig).format_help()
    for flag in [
        "--model",
        "--data",
        "--output",
        "--num-workers",
        "--zero-stage",
        "--precision",
        "--max-steps",
        "--config",
    ]:
        assert flag in help_text
    assert "DeepSpeed ZeRO stage" in help_text


def test_secrets_are_masked_where_a_config_is_shown(monkeypatch):
    from minigpt_ray.config import ServeJobConfig

    cfg = ServeJobConfig(api_key="s3cret-key")
    shown = to_yaml(cfg)
    assert "s3cret" not in shown and "api_key: '***'" in shown
    assert "api_key: ''" in to_yaml(ServeJobConfig())  # an unset key stays visibly unset
    monkeypatch.setenv("MINIGPT_API_KEY", "from-env")
    assert ServeJobConfig().resolved_api_key() == "from-env" and cfg.resolved_api_key() == "s3cret-key"


def test_a_relative_output_is_refused_when_joining_a_cluster(monkeypatch):
    from minigpt_ray.config import ConfigError, SweepJobConfig, TrainJobConfig
    from minigpt_ray.config.base import check_output_dir

    check_output_dir("runs/relative", joins_cluster=False)  # an embedded Ray: relative is fine
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # what `ray job submit` sets for the job
    for cls in (TrainJobConfig, SweepJobConfig):
        with pytest.raises(ConfigError, match=r"^output: must be an absolute path on storage every node shares"):
            cls(output="runs/relative").validate()


def test_an_unwritable_output_is_refused_before_anything_starts(tmp_path):
    """Run without root's power to write anywhere (CAP_DAC_OVERRIDE dropped, util-linux's setpriv): the CLI stops
    with one line and exit 2."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    cmd = [sys.executable, "-m", "minigpt_ray.cli", "finetune", "--output", str(locked / "run")]
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr[-2000:]
    assert err[0].startswith("error: output: is not writable") and str(locked) in err[0], err
    assert not (locked / "run").exists()
