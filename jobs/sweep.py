"""Compress a fine-tuned model: a Ray Tune sweep over pruning and quantization, the Pareto front, and a winner.

  python jobs/sweep.py --model runs/finetune/model --data zh-reviews          # embedded local Ray
  ray job submit --working-dir . -- python jobs/sweep.py --config configs/sweep.yaml   # on a running cluster

Outputs under --output: pareto.csv, pareto.json, pareto.png, summary.md, trials.csv, baseline/, winner/ (the
chosen candidate, loadable with minigpt_ray.compress.load_candidate), tune/ (Tune's results: dashboard/TensorBoard).
Exit status: 0 with a winner, 2 on a bad setting, 3 when no candidate meets the winner constraint.
"""

import sys

from minigpt_ray.config import ConfigError, parse_args
from minigpt_ray.sweep_config import SweepConfig


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv, __doc__, SweepConfig)
        from minigpt_ray.pareto import NoWinnerError
        from minigpt_ray.sweep import run_sweep  # imported late so --help and config errors stay instant

        try:
            run_sweep(cfg)
        except NoWinnerError as err:
            print(f"error: {err}", file=sys.stderr)
            print(f"[minigpt_ray] reports (no winner): {cfg.output}/summary.md", file=sys.stderr)
            return 3
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[minigpt_ray] winner: {cfg.output}/winner  front: {cfg.output}/pareto.csv  plot: {cfg.output}/pareto.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
