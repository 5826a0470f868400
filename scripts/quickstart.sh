#!/usr/bin/env bash
# Fresh machine → installed → the whole pipeline on an embedded local Ray: pretrain a mini GPT on Chinese + English,
# fine-tune it on Chinese reviews, search pruning/quantization for the best size-vs-perplexity model, serve the
# winner (OpenAI-compatible, http://127.0.0.1:8000) and write runs/pipeline/report/report.md. Serves until Ctrl-C
# (pass --no-block to return after the report).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/minigpt pipeline --config configs/pipeline.yaml "$@"
