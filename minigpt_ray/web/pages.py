"""The browser pages, built from the HTML/CSS/JS in static/ (no build step, no CDN, nothing fetched but this
server's own API).

Each page is one self-contained document: its stylesheet, script and (for the runs page) data are inlined, so a page
loads in one request and a saved report.html opens from disk. Plain Python: the Serve app and the pipeline's report
call these functions.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

TRAINING_STAGES = ("pretrain", "finetune", "sft")
"""A pipeline's training stages, in order; each wrote <stage>/metrics.json."""
CURVE_KEYS = ("model", "steps", "initial_val_ppl", "final_val_ppl", "history", "train_curve")
"""What the runs page shows of a training run's metrics.json."""


def _asset(name: str) -> str:
    return (resources.files(__package__) / "static" / name).read_text(encoding="utf-8")


def json_safe(value):
    """JSON-safe copy: NaN and infinities (a diverged trial) become null, which browsers' JSON.parse accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _script_json(value) -> str:
    """JSON to embed in a <script> element: `<` escaped so no value can close the element early."""
    return json.dumps(json_safe(value), ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")


def _page(html_name: str, script_name: str, slots: dict[str, str]) -> str:
    page = _asset(html_name).replace("/*STYLE*/", _asset("style.css"))
    for slot, text in slots.items():
        page = page.replace(slot, text)
    return page.replace("/*SCRIPT*/", _asset(script_name))


def playground_page(base: str) -> str:
    """The playground. `base`: the URL path the API lives under ("" at the root), so the page works behind any
    route prefix."""
    return _page("playground.html", "playground.js", {"/*CONFIG*/": _script_json({"base": base, "model": ""})})


def runs_page(data: dict) -> str:
    """The runs page for runs_data(...)'s result."""
    return _page("runs.html", "runs.js", {"/*DATA*/": _script_json(data)})


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, or being replaced right now: the page shows what is readable
        return None


def _training(stage: str, metrics: dict) -> dict:
    return {"stage": stage, **{k: metrics.get(k) for k in CURVE_KEYS}}


def runs_data(run_dir: str | Path, base: str | None = None) -> dict:
    """What the runs page draws, read from the files the jobs wrote under `run_dir`: a pipeline output (its
    pipeline_state.json with the stage table and the report's samples, sweep/pareto.json, <stage>/metrics.json), a
    sweep output (pareto.json) or a training output (metrics.json). `base`: the server's URL path for links (None
    for a file opened from disk)."""
    root = Path(run_dir)
    state = _read_json(root / "pipeline_state.json") or {}
    pareto = _read_json(root / "sweep" / "pareto.json") or _read_json(root / "pareto.json")
    trainings, rows = [], []
    for stage, path in [(s, root / s / "metrics.json") for s in TRAINING_STAGES] + [
        ("training", root / "metrics.json")
    ]:
        metrics = _read_json(path)
        if metrics is None:
            continue
        trainings.append(_training(stage, metrics))
        sample = metrics.get("sample") or {}
        if sample.get("prompt") is not None:
            rows.append(
                {"model": f"{stage} (end of training)", "prompt": sample["prompt"], "completion": sample["completion"]}
            )
    for label, by_prompt in (state.get("samples") or {}).items():
        rows += [{"model": label, "prompt": p, "completion": text} for p, text in by_prompt.items()]
    return {
        "run_dir": str(root),
        "base": base,
        "stages": state.get("stages") or {},
        "pareto": pareto,
        "trainings": trainings,
        "samples": rows,
    }


def has_runs(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds anything the runs page can show."""
    root = Path(run_dir)
    return any(
        (root / name).is_file()
        for name in ("pipeline_state.json", "pareto.json", "metrics.json", "sweep/pareto.json")
        + tuple(f"{s}/metrics.json" for s in TRAINING_STAGES)
    )
