"""Time to a good model: the quickstart's pretrain + fine-tune stages under candidate budgets, measured in one run,
reporting the fine-tuned model's validation perplexity on zh-reviews against wall-clock time.

  .venv/bin/python bench/time_to_quality.py [--candidates previous,quickstart,...]

Each candidate takes the pretrain and finetune sections of configs/pipeline.yaml and changes only the model preset,
steps, learning rates, micro-batch and evaluation cadence. The corpora, and so the tokenizer and the meaning of a
token, stay the same: every perplexity is per token of the same 4k BPE vocabulary. Wall time is each stage's whole
job (data, start-up, training, export), as the pipeline runs it. `previous` is the quickstart's earlier budget;
`quickstart` is configs/pipeline.yaml's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minigpt_ray.pipeline.run import plan_pipeline  # noqa: E402
from minigpt_ray.training.trainer import run_training  # noqa: E402

INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"


class Budget(NamedTuple):
    steps: int
    lr: float
    micro_batch: int
    eval_every: int  # evaluations and checkpoints cost time too
    checkpoint_every: int


class Candidate(NamedTuple):
    pretrain: Budget
    finetune: Budget
    preset: str = "gpt-nano"
    compile: bool = False  # torch.compile: pretraining compiles (cold cache), fine-tuning reuses its kernels


CANDIDATES: dict[str, Candidate | None] = {
    "previous": Candidate(Budget(300, 3e-3, 16, 50, 100), Budget(100, 1e-3, 16, 25, 50)),
    "ft-lr": Candidate(Budget(300, 3e-3, 16, 150, 150), Budget(100, 3e-3, 16, 50, 50)),
    "balanced": Candidate(Budget(250, 4e-3, 16, 125, 125), Budget(200, 3e-3, 16, 100, 100)),
    "long-ft": Candidate(Budget(150, 4e-3, 16, 75, 75), Budget(300, 3e-3, 16, 150, 150)),
    "high-lr": Candidate(Budget(250, 8e-3, 16, 125, 125), Budget(200, 4e-3, 16, 100, 100)),
    "gpt-micro": Candidate(Budget(250, 3e-3, 16, 125, 125), Budget(200, 2e-3, 16, 100, 100), "gpt-micro"),
    "quickstart": None,  # configs/pipeline.yaml as it stands (500 + 400 steps at micro-batch 8, lr 4e-3 / 3e-3)
    "ft-heavy": Candidate(Budget(250, 4e-3, 8, 125, 125), Budget(550, 3e-3, 8, 275, 275)),
    "ft-heavy-hi": Candidate(Budget(250, 6e-3, 8, 125, 125), Budget(550, 4e-3, 8, 275, 275)),
    "more-ft": Candidate(Budget(450, 4e-3, 8, 225, 225), Budget(500, 3e-3, 8, 250, 250)),
    "batch-4": Candidate(Budget(500, 3e-3, 4, 250, 250), Budget(1100, 2e-3, 4, 550, 550)),
    "compiled": Candidate(Budget(500, 4e-3, 8, 250, 250), Budget(400, 3e-3, 8, 200, 200), compile=True),
    "compiled-more": Candidate(Budget(600, 4e-3, 8, 300, 300), Budget(520, 3e-3, 8, 260, 260), compile=True),
}


def stage_configs(name: str, output: Path):
    candidate = CANDIDATES[name]
    values = yaml.safe_load((ROOT / "configs" / "pipeline.yaml").read_text(encoding="utf-8"))
    if candidate:  # vocab_size stays 4096 whatever the preset: the same tokenizer throughout
        values["pretrain"]["model"]["name"] = candidate.preset
    plan = plan_pipeline(values, output=str(output), stages=["pretrain", "finetune"])
    pretrain, finetune = plan.configs["pretrain"], plan.configs["finetune"]
    for cfg, budget in ((pretrain, candidate and candidate.pretrain), (finetune, candidate and candidate.finetune)):
        cfg.sample_prompt = ""
        if budget:
            t = cfg.train
            t.max_steps, t.lr, t.warmup_steps = budget.steps, budget.lr, budget.steps // 10
            t.micro_batch_size, t.eval_every = budget.micro_batch, budget.eval_every
            t.checkpoint_every = budget.checkpoint_every
            t.compile = candidate.compile
    return pretrain, finetune


def run_candidate(name: str, work: Path) -> dict:
    pretrain, finetune = stage_configs(name, work / name)
    shutil.rmtree(os.environ[INDUCTOR_CACHE], ignore_errors=True)  # every candidate compiles from a cold cache
    started = time.perf_counter()
    first = run_training(pretrain.validate())
    second = run_training(finetune.validate())
    ended = time.perf_counter()
    return {
        "name": name,
        "shape": f"{pretrain.model.name}{', compiled' if pretrain.train.compile else ''}, "
        f"{pretrain.train.micro_batch_size} × 2",
        "steps": f"{pretrain.train.max_steps} + {finetune.train.max_steps}",
        "lrs": f"{pretrain.train.lr:g} / {finetune.train.lr:g}",
        "pretrain_ppl": first["final_val_ppl"],
        "finetune_ppl": second["final_val_ppl"],
        "wall": ended - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", default="previous,quickstart,more-ft", help=f"of {', '.join(CANDIDATES)}")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minigpt-ttq-"))
    os.environ[INDUCTOR_CACHE] = str(work / "inductor")  # set before Ray starts: its workers inherit it
    rows = [run_candidate(name, work) for name in args.candidates.split(",")]
    base = rows[0]
    print(
        f"\n| candidate | model, micro-batch × workers | steps (pretrain + finetune) | lr | pretrain ppl (mix) | "
        f"fine-tuned ppl (zh-reviews) | wall s | ppl × {base['name']} | wall × {base['name']} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['shape']} | {r['steps']} | {r['lrs']} | {r['pretrain_ppl']:.0f} | "
            f"{r['finetune_ppl']:.0f} | {r['wall']:.0f} | "
            f"{r['finetune_ppl'] / base['finetune_ppl']:.2f} | {r['wall'] / base['wall']:.2f} |"
        )


if __name__ == "__main__":
    main()
