"""Served decode speed: each runtime and format behind the real Ray Serve app, over HTTP, against plain transformers
fp32 `generate` on the same model and llama.cpp called directly, all measured in the same run.

  .venv/bin/python bench/serve_decode.py --llama-97m [--tokens 64]
  .venv/bin/python bench/serve_decode.py --model runs/pipeline/finetune/model --winner runs/pipeline/sweep/winner

Served variants: the dense model through PyTorch (fp32) and through llama.cpp (`--runtime llama.cpp`, which
converts it to f16 GGUF when the replica starts), and GGUF exports (q8_0, q4_0; plus `--winner`, a sweep
winner directory, as the pipeline serves it) through llama.cpp. One replica with 2 CPUs (2 threads, as the
llama.cpp anchor). Batch 1: a greedy request for `--tokens` tokens after a 16-token prompt; tokens/s =
completion tokens / request latency (prefill, HTTP and Serve included), best of 3 after a warm-up. Concurrency 8:
eight such requests at once, completion tokens / wall time. Requests set `ignore_eos`, so every reply is
`--tokens` long, as in the anchors. Bandwidth bound as in bench/decode.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import copy_bandwidth_gbs, llama_97m, llama_cpp_tps, transformers_tps  # noqa: E402

from minigpt_ray.cluster import connect_ray, free_port  # noqa: E402
from minigpt_ray.config.serve import GGUF_FILE, ServeJobConfig  # noqa: E402
from minigpt_ray.export import export_gguf  # noqa: E402
from minigpt_ray.modeling.tokenizer import load_tokenizer  # noqa: E402
from minigpt_ray.serving.app import deploy  # noqa: E402

PORT = free_port()  # Serve's HTTP options are fixed when it starts: every deployment here shares them


def served_tps(model_dir: Path, runtime: str, prompt: str, tokens: int) -> tuple[float, float, str]:
    """(batch-1 tokens/s, concurrency-8 tokens/s, runtime reported by /health) of one deployment."""
    from ray import serve

    cfg = ServeJobConfig(model=str(model_dir), runtime=runtime, port=PORT, app_name="bench")
    cfg.scaling.min_replicas = cfg.scaling.max_replicas = 1
    cfg.scaling.cpus_per_replica = 2
    cfg.limits.max_new_tokens = tokens
    url = deploy(cfg.validate())
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}  # replies are `tokens` long

    def one() -> int:
        reply = requests.post(f"{url}/v1/completions", json=body, timeout=600)
        reply.raise_for_status()
        return reply.json()["usage"]["completion_tokens"]

    try:
        reported = requests.get(f"{url}/health", timeout=30).json()["runtime"]
        one()
        best = 0.0
        for _ in range(3):
            start = time.perf_counter()
            count = one()
            best = max(best, count / (time.perf_counter() - start))
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            total = sum(pool.map(lambda _: one(), range(8)))
        return best, total / (time.perf_counter() - start), reported
    finally:
        serve.delete("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/pipeline/finetune/model")
    parser.add_argument("--llama-97m", action="store_true", help="a random-init 97.5M Llama instead of --model")
    parser.add_argument("--winner", default="", help="a sweep winner directory to serve as well")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench_serve_decode_"))
    model_dir = llama_97m(work / "llama97m") if args.llama_97m else Path(args.model)
    tokenizer = load_tokenizer(str(model_dir))
    prompt_ids = list(range(100, 116))
    prompt = tokenizer.decode(prompt_ids)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bandwidth = copy_bandwidth_gbs()
    base, fp32_bytes = transformers_tps(model_dir, prompt_ids, args.tokens, torch.float32)
    variants = [("PyTorch fp32 (dense)", model_dir, "torch", fp32_bytes, None)]
    f16 = export_gguf(model_dir, work / "f16", "f16")  # what --runtime llama.cpp converts the dense model to
    variants.append(("dense, --runtime llama.cpp (f16)", model_dir, "llama.cpp", f16.stat().st_size, f16))
    for quant in ("q8_0", "q4_0"):
        path = export_gguf(model_dir, work / quant, quant)
        variants.append((f"llama.cpp {quant}", path.parent, "llama.cpp", path.stat().st_size, path))
    if args.winner:
        gguf = Path(args.winner) / GGUF_FILE
        variants.append(("sweep winner", Path(args.winner), "auto", gguf.stat().st_size, gguf))
    connect_ray("")
    rows = []
    for label, directory, runtime, size, gguf in variants:
        single, batched, reported = served_tps(directory, runtime, prompt, args.tokens)
        direct = llama_cpp_tps(gguf, prompt_ids, args.tokens, 2) if gguf else None
        rows.append((label, reported, size, single, batched, direct))
    again, _ = transformers_tps(model_dir, prompt_ids, args.tokens, torch.float32)
    reference = (base + again) / 2
    print(f"model {model_dir}, {args.tokens} greedy tokens after {len(prompt_ids)}; copy bandwidth {bandwidth:.1f} "
          f"GB/s; transformers fp32 generate {reference:.1f} tokens/s (mean of before and after)\n")  # fmt: skip
    print("| served model | runtime | weights MB | batch 1 tok/s | × transformers fp32 | × llama.cpp direct | "
          "% of bandwidth bound | concurrency 8 tok/s | × dense served |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    dense_batched = rows[0][4]
    for label, reported, size, single, batched, direct in rows:
        vs_direct = f"{single / direct:.2f}" if direct else "—"
        bound = 100 * single * size / (bandwidth * 1e9)
        print(f"| {label} | {reported} | {size / 1e6:.1f} | {single:.1f} | {single / reference:.2f} | {vs_direct} | "
              f"{bound:.0f}% | {batched:.1f} | {batched / dense_batched:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
