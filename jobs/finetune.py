"""Pretrain or fine-tune a GPT with Ray Train + DeepSpeed ZeRO; the same program as `minigpt finetune` (see --help)."""

import sys

from minigpt_ray.cli import main

sys.exit(main(["finetune", *sys.argv[1:]]))
