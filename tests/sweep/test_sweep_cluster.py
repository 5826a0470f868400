"""The compression sweep on a real local Ray: Tune trials (grid and Optuna NSGA-II), a failing trial recorded
without stopping the sweep, Pareto files whose front no trial dominates, and a loadable winner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from minigpt_ray.compress import load_candidate
from minigpt_ray.config.sweep import SweepJobConfig
from minigpt_ray.modeling.evaluate import perplexity
from minigpt_ray.sweep.pareto import NoWinnerError, dominates
from minigpt_ray.sweep.tuner import run_sweep

pytestmark = pytest.mark.usefixtures("ray_cluster")


def sweep_config(model_dir: str, output: Path, **search) -> SweepJobConfig:
    cfg = SweepJobConfig(model=model_dir, output=str(output), run_name="test")
    cfg.data.sources, cfg.data.max_chars_per_source, cfg.data.val_fraction = ["shakespeare"], 60_000, 0.1
    cfg.data.block_size, cfg.measure.eval_blocks, cfg.measure.calib_blocks = 64, 16, 8
    cfg.measure.decode_tokens, cfg.search.max_concurrent = 8, 2
    for key, value in search.items():
        setattr(cfg.search, key, value)
    return cfg.validate()


def read_rows(output: Path) -> list[dict]:
    with open(output / "trials.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


SERVED = ["served_perplexity", "served_mb", "served_tokens_per_s"]


def check_front(output: Path, objectives: list[str]) -> dict:
    report = json.loads((output / "pareto.json").read_text())
    assert report["objectives"] == objectives
    ok = [r for r in report["trials"] if r["status"] == "ok"]
    assert report["front"]
    for point in report["front"]:
        assert not any(dominates(other, point, objectives) for other in ok), point["label"]
    assert (output / "pareto.png").stat().st_size > 10_000
    assert (output / "pareto.csv").read_text().count("\n") == len(report["front"]) + 1
    assert "## Pareto front" in (output / "summary.md").read_text()
    return report


def test_grid_sweep_records_a_failed_trial_and_installs_a_loadable_winner(tiny_trained, tmp_path, monkeypatch):
    cfg = sweep_config(
        tiny_trained["dir"],
        tmp_path / "sweep",
        algorithm="grid",
        methods=["none", "magnitude", "wanda", "structured"],
        sparsities=[0.5],
        patterns=["unstructured"],
        quants=["none", "int8-weight"],
        recovery_steps=[0],
    )
    monkeypatch.setenv("MINIGPT_RAY_FAULT", "fail-trial:method=structured,quant=none")
    run_sweep(cfg)
    output = tmp_path / "sweep"
    rows = read_rows(output)
    assert len(rows) == 1 + 7  # baseline + every distinct combination but the uncompressed one
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "injected failure" in failed[0]["error"] and failed[0]["label"] == "structured 50%"
    report = check_front(output, SERVED)  # the default objectives: each candidate as llama.cpp serves it
    winner = report["winner"]
    assert winner["served_perplexity"] <= 1.05 * report["baseline"]["perplexity"]
    assert winner["served_runtime"] == "llama.cpp" and winner["served_mb"] == winner["gguf_mb"]
    assert winner["served_mb"] < 0.4 * report["baseline"]["size_mb"]  # q8_0 against fp32
    model, _, manifest = load_candidate(output / "winner")
    assert perplexity(model, _eval_blocks(cfg)) == pytest.approx(winner["perplexity"], rel=1e-9)
    assert manifest["selected_by"].startswith("served perplexity <= 1.05")
    assert (output / "winner" / "model.gguf").stat().st_size > 10_000  # what llama.cpp serves, Ollama runs
    assert winner["gguf_type"] == "q8_0" and winner["gguf_ppl_ratio"] == pytest.approx(1, abs=0.02)
    assert winner["gguf_decode_tokens_per_s"] > 0 and winner["gguf_mb"] < report["baseline"]["size_mb"]
    experiments = list((output / "tune").iterdir())  # Tune's own layout, for the dashboard / TensorBoard
    assert len(experiments) == 1 and len(list(experiments[0].glob("*/result.json"))) == 7
    assert len(list(experiments[0].glob("*/events.out.tfevents.*"))) == 7  # Tune's TensorBoard logs, one per trial


def _eval_blocks(cfg):
    from minigpt_ray.sweep.prepare import prepare_sweep

    return prepare_sweep(cfg).data.eval_blocks


def test_optuna_nsga2_sweep_runs_the_requested_trials(tiny_trained, tmp_path):
    cfg = sweep_config(
        tiny_trained["dir"],
        tmp_path / "optuna",
        algorithm="optuna",
        num_samples=6,
        methods=["magnitude", "wanda"],
        sparsities=[0.3, 0.5],
        patterns=["unstructured", "2:4"],
        quants=["none", "int8-weight", "int4-weight"],
        group_sizes=[32],
        student_layers=[0, 1],
        distill_steps=[10],
    )
    run_sweep(cfg)
    rows = read_rows(tmp_path / "optuna")
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows)
    report = check_front(tmp_path / "optuna", SERVED)
    assert {r["method"] for r in report["trials"][1:]} <= {"magnitude", "wanda"}
    assert "1" in {r["student_layers"] for r in rows}  # the search always tries a student (its first point)
    # and its second point: int4 on the model itself at the first sparsity, pattern and group size of the space
    seeded = ("magnitude", "0.3", "unstructured", "int4-weight", "32", "0")
    fields = ("method", "sparsity_setting", "pattern", "quant", "group_size", "student_layers")
    assert any(tuple(str(r[f] or 0) for f in fields) == seeded for r in rows), [
        tuple(r[f] for f in fields) for r in rows
    ]


def test_unmet_constraint_writes_reports_but_no_winner(tiny_trained, tmp_path):
    cfg = sweep_config(
        tiny_trained["dir"], tmp_path / "none", algorithm="grid", methods=["none"], quants=["int8-weight"]
    )
    stale = tmp_path / "none" / "winner"  # a winner left by an earlier sweep into the same output
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text("{}")
    cfg.winner.max_size_mb = 0.001
    with pytest.raises(NoWinnerError, match=r"closest: .*int8-weight"):
        run_sweep(cfg)
    assert (tmp_path / "none" / "pareto.json").is_file()
    assert not stale.exists() and not list((tmp_path / "none").glob(".winner*"))  # never served again


def test_a_distilled_student_enters_the_front_with_its_real_numbers(tiny_trained, tmp_path):
    cfg = sweep_config(
        tiny_trained["dir"],
        tmp_path / "kd",
        algorithm="grid",
        methods=["none"],
        quants=["none", "int8-weight"],
        student_layers=[1],
        distill_steps=[30],
        distill_lr=3e-3,
    )
    cfg.winner.max_ppl_ratio = 100.0  # any candidate may win: the test is about the student's numbers
    result = run_sweep(cfg)
    assert [r["student_layers"] for r in read_rows(tmp_path / "kd")] == ["", "1", "1"]  # baseline, students
    students = sorted((r for r in result["rows"] if r["trial"] != "baseline"), key=lambda r: r["label"])
    assert [r["label"] for r in students] == ["distill 1L 30 steps", "distill 1L 30 steps + int8-weight"]
    assert all(r["status"] == "ok" and r["distill_steps"] == 30 for r in students)
    baseline = result["baseline"]
    for row in students:
        assert row["params"] < baseline["params"] and row["served_mb"] < baseline["served_mb"]
        assert row["served_runtime"] == "llama.cpp" and float(row["served_tokens_per_s"]) > 0
        model, _, manifest = load_candidate(row["artifact"])
        assert model.config.num_hidden_layers == 1 and manifest["student"]["init_from_layers"] == [0]
    check_front(tmp_path / "kd", SERVED)
    assert load_candidate(tmp_path / "kd" / "winner")[0].config.num_hidden_layers == 1
