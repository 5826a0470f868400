"""Compress a model with a Ray Tune sweep: Pareto front and winner; the same program as `minigpt sweep` (see --help)."""

import sys

from minigpt_ray.cli import main

sys.exit(main(["sweep", *sys.argv[1:]]))
