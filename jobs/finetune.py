"""Pretrain or fine-tune a GPT with Ray Train + DeepSpeed ZeRO.

  python jobs/finetune.py --config configs/pretrain.yaml                 # embedded local Ray
  ray job submit --working-dir . -- python jobs/finetune.py --config ...  # on a running cluster

Outputs under --output: model/ (HF directory), metrics.json, run_config.yaml, tokenizer/, checkpoints/.
"""

import sys

from minigpt_ray.config import ConfigError, parse_args


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv, __doc__)
        from minigpt_ray.train import run_training  # imported late so --help and config errors stay instant

        metrics = run_training(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[minigpt_ray] val loss {metrics['initial_val_loss']:.3f} -> {metrics['final_val_loss']:.3f} "
          f"(ppl {metrics['initial_val_ppl']:.1f} -> {metrics['final_val_ppl']:.1f}) in {metrics['steps']} steps, "
          f"{metrics['tokens_per_s']:,.0f} tokens/s")
    if "sample" in metrics:
        print(f"[minigpt_ray] sample: {metrics['sample']['prompt']}{metrics['sample']['completion']}")
    print(f"[minigpt_ray] model: {cfg.output}/model  metrics: {cfg.output}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
