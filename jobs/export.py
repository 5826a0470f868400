"""Export a model to GGUF for llama.cpp / Ollama; the same program as `minigpt export` (see --help)."""

import sys

from minigpt_ray.cli import main

sys.exit(main(["export", *sys.argv[1:]]))
