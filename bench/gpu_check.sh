#!/usr/bin/env bash
# GPU path check: the same jobs/finetune.py on one CUDA GPU — bf16 (DeepSpeed's bf16 optimizer, fp32 master
# weights), nccl, DeepSpeed ZeRO-2 — pretraining a gpt-small preset from random init, then fine-tuning the saved HF
# model directory through from_pretrained with ZeRO-3. Prints the backend each job used, tokens/s and MFU.
#
#   bash bench/gpu_check.sh [OUTPUT_DIR]        (default runs/gpu_check; PYTHON=... picks the interpreter)
#
# Corpus: `shakespeare` (DATA=... to change), so the check needs no Chinese corpus packages on the GPU machine.
# The serve smoke test joins this script once the Serve app exists (issue 4).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu_check}"
py="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
data="${DATA:-shakespeare}"
steps="${STEPS:-300}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch, ray, deepspeed, transformers; print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), ray {ray.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}')"

common=(--data "$data" --num-workers 1 --use-gpu true --precision bf16 --block-size 256 --micro-batch-size 64
        --max-chars-per-source 6000000 --eval-every 100 --eval-batches 16 --log-every 50)
start=$(date +%s)
"$py" jobs/finetune.py --config configs/pretrain.yaml "${common[@]}" --output "$out/pretrain" --model gpt-small \
    --vocab-size 8192 --tokenizer-train-chars 2000000 --zero-stage 2 --max-steps "$steps" --warmup-steps 30 \
    --lr 1e-3 --checkpoint-every "$steps" --sample-prompt "ROMEO:"
"$py" jobs/finetune.py --config configs/finetune.yaml "${common[@]}" --output "$out/finetune" \
    --model "$out/pretrain/model" --zero-stage 3 --max-steps 100 --warmup-steps 10 --lr 3e-4 \
    --checkpoint-every 100 --sample-prompt "ROMEO:"
echo "[gpu_check] both jobs took $(( $(date +%s) - start )) s"

"$py" - "$out" <<'EOF'
import json, sys
for stage in ("pretrain", "finetune"):
    m = json.load(open(f"{sys.argv[1]}/{stage}/metrics.json"))
    steady = f"{m['steady_tokens_per_s']:,.0f}" if m["steady_tokens_per_s"] else "n/a"
    print(f"[gpu_check] {stage}: {m['model']}, ZeRO-{m['zero_stage']} {m['precision']}, {m['steps']} steps, "
          f"val loss {m['initial_val_loss']:.3f} -> {m['final_val_loss']:.3f}, "
          f"{m['tokens_per_s']:,.0f} tokens/s (steady {steady}), MFU {m['mfu']:.1%}, "
          f"live tensors {max(m['tensor_bytes_per_worker']) / 2**20:.0f} MiB, wall {m['wall_seconds']:.0f} s")
EOF
