"""The browser pages as documents (no browser, no cluster): self-contained, data read from the run files, nothing
in the data able to break out of its <script> element, and the runs directory found from a served sweep winner."""

from __future__ import annotations

import json
import math
import re

import pytest

from minigpt_ray.config import ConfigError, ServeJobConfig
from minigpt_ray.config.serve import check_serve_model
from minigpt_ray.web.pages import has_runs, playground_page, runs_data, runs_page


def _write(path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def _embedded(page: str, element_id: str) -> dict:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def test_pages_are_self_contained_one_document_each():
    for page in (playground_page("/prefix"), runs_page({"base": None})):
        assert "/*STYLE*/" not in page and "/*SCRIPT*/" not in page and "--accent: #0969da" in page
        assert not re.search(r"""(src|href)=["']https?://""", page)  # no CDN, nothing fetched from elsewhere
    assert _embedded(playground_page("/prefix"), "page-config") == {"base": "/prefix", "model": ""}


def test_runs_data_reads_a_pipeline_output(tmp_path):
    pareto = {"trials": [{"trial": "baseline", "status": "ok", "perplexity": math.inf}], "front": [], "winner": None}
    _write(tmp_path / "sweep" / "pareto.json", pareto)
    state = {"stages": {"pretrain": {"seconds": 3.0}}, "samples": {"winner": {"ROMEO:": "a"}}}
    _write(tmp_path / "pipeline_state.json", state)
    metrics = {"model": "gpt-nano", "history": [{"step": 0, "val_loss": 6.0}], "train_curve": [[4, 5.5]],
               "sample": {"prompt": "ROMEO:", "completion": " hi</script><script>alert(1)</script>"}}  # fmt: skip
    _write(tmp_path / "finetune" / "metrics.json", metrics)
    data = runs_data(tmp_path, base="")
    assert data["stages"] == {"pretrain": {"seconds": 3.0}} and data["pareto"] == pareto
    assert [t["stage"] for t in data["trainings"]] == ["finetune"] and data["trainings"][0]["train_curve"] == [[4, 5.5]]
    assert [s["model"] for s in data["samples"]] == ["finetune (end of training)", "winner"]
    page = runs_page(data)
    embedded = _embedded(page, "runs-data")
    assert embedded["samples"][0]["completion"] == metrics["sample"]["completion"]  # intact, and it did not
    assert page.count("<script>alert(1)") == 0  # close the data element: every < is escaped inside it
    assert embedded["pareto"]["trials"][0]["perplexity"] is None  # infinities become null (valid JSON)
    assert has_runs(tmp_path) and not has_runs(tmp_path / "sweep" / "nothing")


def test_a_sweep_or_training_output_is_a_run_directory_too(tmp_path):
    _write(tmp_path / "sweep" / "pareto.json", {"trials": [], "front": [], "winner": None})
    assert runs_data(tmp_path / "sweep")["pareto"] is not None
    _write(tmp_path / "train" / "metrics.json", {"model": "m"})
    assert [t["stage"] for t in runs_data(tmp_path / "train")["trainings"]] == ["training"]


def test_the_runs_directory_is_found_from_a_served_sweep_winner(tmp_path):
    winner = tmp_path / "run" / "sweep" / "winner"
    winner.mkdir(parents=True)
    assert ServeJobConfig(model=str(winner)).resolved_runs_dir() == ""
    _write(tmp_path / "run" / "sweep" / "pareto.json", {})
    assert ServeJobConfig(model=str(winner)).resolved_runs_dir() == str(tmp_path / "run" / "sweep")
    _write(tmp_path / "run" / "pipeline_state.json", {})
    assert ServeJobConfig(model=str(winner)).resolved_runs_dir() == str(tmp_path / "run")
    assert ServeJobConfig(model=str(winner), runs_dir="elsewhere").resolved_runs_dir() == "elsewhere"


def test_a_missing_runs_dir_is_named(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"^runs_dir: directory .*nope does not exist"):
        check_serve_model(ServeJobConfig(model=str(tmp_path / "model"), runs_dir=str(tmp_path / "nope")))
