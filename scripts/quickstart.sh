#!/usr/bin/env bash
# Fresh machine → installed → a mini GPT pretrained on Chinese + English, fine-tuned on Chinese reviews, sampled.
# Both stages are `jobs/finetune.py` on an embedded local Ray (2 CPU workers, DeepSpeed ZeRO-2, bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
start=$(date +%s)
.venv/bin/python jobs/finetune.py --config configs/pretrain.yaml "$@"
.venv/bin/python jobs/finetune.py --config configs/finetune.yaml "$@"
echo "[quickstart] pretrain + fine-tune took $(( $(date +%s) - start )) s; outputs in runs/pretrain and runs/finetune"
