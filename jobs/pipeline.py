"""Pretrain, fine-tune, compress and serve in one job; the same program as `minigpt pipeline` (see --help)."""

import sys

from minigpt_ray.cli import main

sys.exit(main(["pipeline", *sys.argv[1:]]))
