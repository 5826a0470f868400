"""The pipeline re-runs a stage whose settings changed and every stage after it (plain logic, stages faked)."""

from __future__ import annotations

import copy

from minigpt_ray.pipeline import run

VALUES = {
    "stages": ["pretrain", "finetune", "sweep"],
    "pretrain": {"model": {"name": "gpt-nano", "vocab_size": 512}, "data": {"sources": ["shakespeare"]}},
    "finetune": {"data": {"sources": ["shakespeare"]}, "train": {"lr": 1e-3}},
    "sweep": {"data": {"sources": ["shakespeare"]}},
}
MARKERS = {"pretrain": "model/config.json", "finetune": "model/config.json", "sweep": "winner/manifest.json"}


def run_faked(values: dict, output, monkeypatch) -> list[str]:
    ran = []

    def fake_stage(stage, _cfg):
        marker = output / stage / MARKERS[stage]
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")
        ran.append(stage)
        return f"{stage} ran", {}

    plan = run.plan_pipeline(copy.deepcopy(values), str(output))
    monkeypatch.setattr(run, "_run_stage", fake_stage)
    monkeypatch.setattr(run, "write_pipeline_report", lambda *a: output / "report.md")
    run.run_pipeline(plan)
    return ran


def test_digests_chain_and_name_the_training_runs(tmp_path):
    plan = run.plan_pipeline(copy.deepcopy(VALUES), str(tmp_path))
    changed = copy.deepcopy(VALUES)
    changed["finetune"]["train"]["lr"] = 3e-4
    other = run.plan_pipeline(changed, str(tmp_path))
    assert plan.digests["pretrain"] == other.digests["pretrain"]
    assert all(plan.digests[s] != other.digests[s] for s in ("finetune", "sweep", "serve"))
    assert plan.configs["finetune"].run_name == f"finetune-{plan.digests['finetune'][:8]}"


def test_a_changed_section_reruns_that_stage_and_every_later_one(tmp_path, monkeypatch):
    output = tmp_path / "p"
    assert run_faked(VALUES, output, monkeypatch) == ["pretrain", "finetune", "sweep"]
    assert run_faked(VALUES, output, monkeypatch) == []  # same settings: all finished
    changed = copy.deepcopy(VALUES)
    changed["finetune"]["train"]["lr"] = 3e-4
    assert run_faked(changed, output, monkeypatch) == ["finetune", "sweep"]
    (output / "pretrain" / "model" / "config.json").unlink()  # an upstream stage that must run again
    assert run_faked(changed, output, monkeypatch) == ["pretrain", "finetune", "sweep"]
