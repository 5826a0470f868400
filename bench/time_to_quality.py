"""Time to a good model: the quickstart's pretrain + fine-tune stages under candidate budgets, measured in one run,
reporting the fine-tuned model's validation perplexity on zh-reviews against wall-clock time.

  .venv/bin/python bench/time_to_quality.py [--candidates today,ft-lr,balanced,long-ft]

Each candidate takes the pretrain and finetune sections of configs/pipeline.yaml and changes only steps, learning
rates and evaluation cadence (the corpora, and so the tokenizer and the meaning of a token, stay the same: every
perplexity is per token of the same 4k BPE vocabulary). Wall time is each stage's whole job, start-up and export
included, as in the pipeline; "ppl drop per minute" is (620 - final perplexity) per wall-clock minute, where 620
is the pretrained-from-scratch starting point of the fine-tune in the quickstart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minigpt_ray.pipeline.run import plan_pipeline  # noqa: E402
from minigpt_ray.training.trainer import run_training  # noqa: E402

CANDIDATES = {
    # name: (pretrain steps, pretrain lr, finetune steps, finetune lr)
    "today": (300, 3e-3, 100, 1e-3),
    "ft-lr": (300, 3e-3, 100, 3e-3),
    "balanced": (250, 4e-3, 200, 3e-3),
    "long-ft": (150, 4e-3, 300, 3e-3),
}


def stage_configs(name: str, output: Path):
    pre_steps, pre_lr, ft_steps, ft_lr = CANDIDATES[name]
    values = yaml.safe_load((ROOT / "configs" / "pipeline.yaml").read_text(encoding="utf-8"))
    plan = plan_pipeline(values, output=str(output), stages=["pretrain", "finetune"])
    pretrain, finetune = plan.configs["pretrain"], plan.configs["finetune"]
    for cfg, steps, lr in ((pretrain, pre_steps, pre_lr), (finetune, ft_steps, ft_lr)):
        t = cfg.train
        t.max_steps, t.lr, t.warmup_steps = steps, lr, steps // 10
        if name != "today":  # two evaluations and checkpoints per stage instead of every 25-50 steps
            t.eval_every = t.checkpoint_every = steps // 2
        cfg.sample_prompt = ""
    return pretrain, finetune


def run_candidate(name: str, work: Path) -> dict:
    pretrain, finetune = stage_configs(name, work / name)
    started = time.perf_counter()
    first = run_training(pretrain.validate())
    middle = time.perf_counter()
    second = run_training(finetune.validate())
    ended = time.perf_counter()
    return {
        "name": name,
        "steps": f"{pretrain.train.max_steps} + {finetune.train.max_steps}",
        "lrs": f"{pretrain.train.lr:g} / {finetune.train.lr:g}",
        "pretrain_ppl": first["final_val_ppl"],
        "finetune_ppl": second["final_val_ppl"],
        "pretrain_s": middle - started,
        "finetune_s": ended - middle,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minigpt-ttq-"))
    rows = [run_candidate(name, work) for name in args.candidates.split(",")]
    base = rows[0]
    print("\n| candidate | steps (pretrain + finetune) | lr | pretrain ppl | fine-tuned ppl (zh-reviews) | wall s | "
          f"ppl × {base['name']} | wall × {base['name']} | ppl drop per minute |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        wall = r["pretrain_s"] + r["finetune_s"]
        base_wall = base["pretrain_s"] + base["finetune_s"]
        print(
            f"| {r['name']} | {r['steps']} | {r['lrs']} | {r['pretrain_ppl']:.0f} | {r['finetune_ppl']:.0f} | "
            f"{wall:.0f} | {r['finetune_ppl'] / base['finetune_ppl']:.2f} | {wall / base_wall:.2f} | "
            f"{(620 - r['finetune_ppl']) / (wall / 60):.0f} |"
        )


if __name__ == "__main__":
    main()
