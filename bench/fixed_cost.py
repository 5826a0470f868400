"""Fixed cost of a training job: its wall time minus the training loop's own, with a cold and a warm cache.

  .venv/bin/python bench/fixed_cost.py [--steps 300] [--runs cold,warm,warm]

Runs the quickstart's pretraining stage (configs/pipeline.yaml's `pretrain` section: gpt-nano on the three built-in
corpora, 2 workers, ZeRO-2) the way users do, `python jobs/finetune.py --config ... --output ...`, one process per
run, each starting its own embedded Ray. The first run gets an empty cache directory (cold: the tokenizer is
trained and the corpus packed), later ones the same directory (warm). Per run: the process's wall time from
outside, the training loop's time (`phase_seconds.training` in metrics.json) and the rest split by phase.
Targets: fixed cost <= 30 s cold, <= 20 s warm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PHASES = ("prepare", "checks", "workers_start", "engine_build", "first_eval", "final_save", "finish")


def run_job(section: dict, output: Path, cache: Path) -> tuple[float, dict]:
    config = output.parent / f"{output.name}.yaml"
    config.write_text(yaml.safe_dump(section, allow_unicode=True))
    env = dict(os.environ, MINIGPT_RAY_CACHE=str(cache))
    started = time.perf_counter()
    cmd = [sys.executable, str(REPO / "jobs" / "finetune.py"), "--config", str(config), "--output", str(output)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads((output / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--runs", default="cold,warm", help="comma-separated cold/warm runs, in order")
    args = parser.parse_args()
    section = yaml.safe_load((REPO / "configs" / "pipeline.yaml").read_text())["pretrain"]
    section["train"]["max_steps"] = args.steps
    work = Path(tempfile.mkdtemp(prefix="minigpt-fixed-"))
    rows = []
    for index, kind in enumerate(args.runs.split(",")):
        cache = work / "cache"
        if kind == "cold":
            shutil.rmtree(cache, ignore_errors=True)  # warm runs reuse what the run before them cached
        wall, metrics = run_job(section, work / f"run{index}", cache)
        phases = metrics["phase_seconds"]
        rows.append((kind, wall, phases, wall - phases["training"], metrics))
        print(f"{kind}: wall {wall:.1f} s, training {phases['training']:.1f} s, {json.dumps(phases)}", flush=True)
    print(f"\ngpt-nano, {args.steps} steps, 2 workers, ZeRO-2 ({os.cpu_count()} CPUs)\n")
    print("| cache | process wall s | training loop s | fixed s | " + " | ".join(PHASES) + " | imports + Ray exit |")
    print("|---|---|---|---|" + "---|" * (len(PHASES) + 1))
    for kind, wall, phases, fixed, _ in rows:
        inside = sum(phases.values())
        cells = " | ".join(f"{phases.get(p, 0):.1f}" for p in PHASES)
        print(f"| {kind} | {wall:.1f} | {phases['training']:.1f} | {fixed:.1f} | {cells} | {wall - inside:.1f} |")
    for kind, _, _, fixed, _ in rows:
        target = 30 if kind == "cold" else 20
        print(f"{kind}: fixed cost {fixed:.1f} s (target <= {target} s): {'met' if fixed <= target else 'not met'}")


if __name__ == "__main__":
    main()
