"""Pareto front, winner choice and report files: pure logic, no cluster."""

from __future__ import annotations

import json
import random

import pytest

from minigpt_ray.sweep.pareto import NoWinnerError, add_ratios, choose_winner, dominates, pareto_front, write_reports

OBJ = ["perplexity", "size_mb"]


def row(trial, ppl, mb, tps=100.0, status="ok"):
    return {
        "trial": trial,
        "label": trial,
        "status": status,
        "perplexity": ppl,
        "size_mb": mb,
        "weights_bytes": mb * 1e6,
        "linear_bytes": mb * 5e5,
        "decode_tokens_per_s": tps,
        "sparsity": 0.0,
    }


def test_dominance():
    assert dominates(row("a", 10, 1), row("b", 11, 1), OBJ)
    assert not dominates(row("a", 10, 1), row("b", 10, 1), OBJ)
    assert not dominates(row("a", 10, 2), row("b", 11, 1), OBJ)
    assert dominates(row("a", 10, 1, tps=200), row("b", 10, 1, tps=100), OBJ + ["decode_tokens_per_s"])


def test_front_of_random_points_is_exactly_the_non_dominated_set():
    rng = random.Random(0)
    rows = [row(str(i), rng.uniform(10, 20), rng.uniform(1, 5)) for i in range(200)]
    rows.append(row("failed", 1, 0.1, status="failed"))
    front = pareto_front(rows, OBJ)
    ok = [r for r in rows if r["status"] == "ok"]
    for r in front:
        assert not any(dominates(o, r, OBJ) for o in ok)
    for r in ok:
        if r not in front:
            assert any(dominates(f, r, OBJ) for f in front)
    assert all(r["status"] == "ok" for r in front)
    sizes = [r["perplexity"] for r in front]
    assert sizes == sorted(sizes)


def test_equal_points_appear_once_on_the_front():
    front = pareto_front([row("baseline", 10, 4), row("t1", 10, 4), row("t2", 11, 2)], OBJ)
    assert [r["trial"] for r in front] == ["baseline", "t2"]


def test_winner_is_smallest_within_the_perplexity_budget():
    rows = [row("base", 10.0, 4), row("a", 10.4, 2), row("b", 10.6, 1), row("c", 10.2, 3)]
    assert choose_winner(rows, 10.0)["trial"] == "a"  # b is 6% worse
    assert choose_winner(rows, 10.0, max_ppl_ratio=1.1)["trial"] == "b"
    assert choose_winner(rows, 10.0, max_ppl_ratio=1.1, max_ppl=10.3)["trial"] == "c"
    assert choose_winner(rows, 10.0, max_size_mb=3.5)["trial"] == "a"


def test_no_winner_lists_the_closest_trials():
    rows = [row("base", 10.0, 4), row("a", 10.4, 2), row("b", 12, 1)]
    with pytest.raises(NoWinnerError, match=r"^winner: no candidate meets .*size <= 0\.5 MB; closest: b \(ppl"):
        choose_winner(rows, 10.0, max_size_mb=0.5)


def test_reports_are_written(tmp_path):
    rows = [row("baseline", 10.0, 4), row("a", 10.4, 2), row("b", 12, 1), row("x", 0, 0, status="failed")]
    rows[-1].update(error="boom")
    add_ratios(rows, rows[0])
    front = pareto_front(rows, OBJ)
    write_reports(tmp_path, rows, front, rows[0], rows[1], "ppl <= 10.5", OBJ)
    data = json.loads((tmp_path / "pareto.json").read_text())
    assert [r["trial"] for r in data["front"]] == ["baseline", "a", "b"] and data["winner"]["trial"] == "a"
    assert (tmp_path / "pareto.csv").read_text().count("\n") == 4
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "summary.md").read_text()
    assert "**a**" in summary and "x x: boom" in summary


def test_winner_is_judged_as_served_and_can_prefer_speed():
    # a: small as PyTorch weights but its GGUF is larger; b: larger weights, smallest and fastest GGUF;
    # c: served by PyTorch (no GGUF form), its PyTorch numbers count; d: fast but over the perplexity budget
    rows = [
        row("base", 10.0, 4) | {"served_mb": 2.0, "served_perplexity": 10.0, "served_tokens_per_s": 500.0},
        row("a", 10.1, 1) | {"served_mb": 1.5, "served_perplexity": 10.2, "served_tokens_per_s": 600.0},
        row("b", 10.2, 2) | {"served_mb": 0.8, "served_perplexity": 10.3, "served_tokens_per_s": 900.0},
        row("c", 10.0, 1.2, tps=950.0),
        row("d", 10.0, 3) | {"served_mb": 0.5, "served_perplexity": 11.0, "served_tokens_per_s": 2000.0},
    ]
    assert choose_winner(rows, 10.0)["trial"] == "b"  # d's GGUF loses too much; a's file is bigger
    assert choose_winner(rows, 10.0, prefer="speed")["trial"] == "c"
    assert choose_winner(rows, 10.0, max_size_mb=1.0, prefer="speed")["trial"] == "b"
    add_ratios(rows, rows[0])
    assert rows[2]["served_bytes_ratio"] == pytest.approx(0.8 / 4) and rows[2]["served_decode_ratio"] == 9.0
    assert rows[3]["served_bytes_ratio"] == pytest.approx(1.2 / 4) and rows[3]["served_ppl_ratio"] == 1.0


def test_a_search_first_tries_a_student_and_the_strongest_weight_only_quantization_alone():
    from minigpt_ray.config import SweepJobConfig
    from minigpt_ray.config.sweep import search_choices
    from minigpt_ray.sweep.tuner import seed_points

    search = SweepJobConfig().search
    search.methods, search.quants, search.student_layers = (
        ["wanda", "none"],
        ["none", "int8-weight", "int4-weight"],
        [0, 2],
    )
    student, quantized = seed_points(search_choices(search))
    assert (student["student_layers"], student["method"], student["quant"]) == (2, "wanda", "none")
    assert (quantized["student_layers"], quantized["method"], quantized["quant"]) == (0, "none", "int4-weight")
    search.quants, search.student_layers = ["none", "int8-dynamic", "int8-weight"], [2, 0]
    (quantized,) = [p for p in seed_points(search_choices(search)) if p["quant"] != "none"]
    assert (quantized["student_layers"], quantized["quant"]) == (0, "int8-weight")  # int8-dynamic is not weight-only
    search.quants, search.student_layers = ["none", "int8-dynamic"], [0]
    assert seed_points(search_choices(search)) is None  # nothing to seed: the sampler draws every point
