"""One command from corpus to served model: pretrain → fine-tune → compression sweep → serve the winner → report.

  python jobs/pipeline.py --config configs/pipeline.yaml        # embedded Ray; serves until Ctrl-C at the end
  python jobs/pipeline.py --config configs/pipeline.yaml --stages pretrain,finetune   # some stages only
  ray job submit --working-dir . -- python jobs/pipeline.py --config configs/pipeline.yaml --output /shared/runs/p

Each section of the YAML (pretrain, finetune, sweep, serve) holds the settings of that stage's own job
(jobs/finetune.py, jobs/sweep.py, jobs/serve.py); a stage's model defaults to the previous stage's output.
Re-running with the same --output skips finished stages. Report: <output>/report/report.md.
"""

import argparse
import os
import sys

from minigpt_ray.config import ConfigError, load_yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/pipeline.yaml", help="pipeline YAML (sections per stage)")
    parser.add_argument("--output", default="", help="output directory (default: the YAML's output)")
    parser.add_argument("--stages", default="", help="comma-separated subset of pretrain,finetune,sweep,serve")
    parser.add_argument("--no-block", action="store_true", help="return after the report instead of serving "
                        "until Ctrl-C (an embedded Ray's endpoint stops with the process)")
    args = parser.parse_args(argv)
    try:
        from minigpt_ray.pipeline import plan_pipeline, run_pipeline

        stages = [s.strip() for s in args.stages.split(",") if s.strip()] or None
        plan = plan_pipeline(load_yaml(args.config), args.output, stages)
        state = run_pipeline(plan)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[minigpt_ray] report: {state['report']}", flush=True)
    if "serve" not in plan.stages:
        return 0
    print(f"[minigpt_ray] endpoint up: {state['stages']['serve']['url']}/v1/completions", flush=True)
    if args.no_block or plan.configs["serve"].ray_address or os.environ.get("RAY_ADDRESS"):
        return 0
    from minigpt_ray.serve import serve_until_interrupted

    print("[minigpt_ray] serving until Ctrl-C", flush=True)
    serve_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())
