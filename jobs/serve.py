"""Serve a model as an OpenAI-compatible Ray Serve endpoint; the same program as `minigpt serve` (see --help)."""

import sys

from minigpt_ray.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
