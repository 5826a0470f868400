"""Batch-1 greedy decode speed of one model in every runtime and format, as ratios against plain transformers fp32
`generate` measured in the same run, with each runtime's share of the memory-bandwidth bound.

  .venv/bin/python bench/decode.py [--model runs/pipeline/finetune/model | --llama-97m] [--tokens 64]

Runtimes: transformers (fp32, bf16) and llama.cpp through `llama-cpp-python` on the GGUF files `minigpt export`
writes (f32, f16, q8_0, q4_0, q4_1); scripts/setup.sh installs llama.cpp (built without its AMX path, which
crashes on small models: llama.cpp issue 20824). `--llama-97m` builds a random-init Llama of 97.5M parameters
(hidden 768, 12 layers, FFN 2048, vocab 16k) with a byte-level BPE tokenizer: random weights decode at the real
speed.
Bandwidth bound: bytes of weights read per token / copy bandwidth (a 256 MiB copy between touched buffers, read +
write), as a percentage: how close each runtime gets to streaming its weights once per token.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt_ray.export import export_gguf  # noqa: E402
from minigpt_ray.modeling.tokenizer import save_tokenizer, train_bpe  # noqa: E402

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_1", "q4_0")


def copy_bandwidth_gbs() -> float:
    """Read + write bandwidth of a large copy (the memory a decode step streams its weights through)."""
    src = torch.ones(64 * 2**20, dtype=torch.float32)
    dst = torch.zeros_like(src)  # touched once here, so the timed copies pay no page faults
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def llama_97m(directory: Path) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from minigpt_ray.data.corpora import source_documents

    texts = [d.text for d in source_documents("shakespeare", max_chars=400_000)]
    tokenizer = train_bpe(texts, 16384)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=2048, max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    save_tokenizer(tokenizer, directory)
    return directory


def transformers_tps(model_dir: Path, prompt: list[int], tokens: int, dtype: torch.dtype) -> tuple[float, int]:
    """(tokens/s, weight bytes) of transformers' own generate."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    ids = torch.tensor([prompt])
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        model.generate(ids, **kwargs)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            model.generate(ids, **kwargs)
            best = min(best, time.perf_counter() - start)
    return tokens / best, weight_bytes


def llama_cpp_tps(gguf: Path, prompt: list[int], tokens: int, threads: int) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, verbose=False)
    best = float("inf")
    for _ in range(4):  # the first run warms up
        llm.reset()  # no KV prefix reuse: every run prefills its prompt, as transformers' generate does
        start = time.perf_counter()
        for count, _token in enumerate(llm.generate(prompt, temp=0.0, top_k=1, reset=True), start=1):
            if count == tokens:
                break
        best = min(best, time.perf_counter() - start)
    return tokens / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/pipeline/finetune/model")
    parser.add_argument("--llama-97m", action="store_true", help="a random-init 97.5M Llama instead of --model")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    model_dir = llama_97m(work / "llama97m") if args.llama_97m else Path(args.model)
    prompt = list(range(100, 116))  # 16 prompt tokens, as the llama.cpp comparison in the docs
    bandwidth = copy_bandwidth_gbs()
    base, fp32_bytes = transformers_tps(model_dir, prompt, args.tokens, torch.float32)
    bf16, bf16_bytes = transformers_tps(model_dir, prompt, args.tokens, torch.bfloat16)
    rows = [("transformers fp32", base, fp32_bytes), ("transformers bf16", bf16, bf16_bytes)]
    for quant in GGUF_TYPES:
        path = export_gguf(model_dir, work / f"gguf_{quant}", quant)
        rows.append((f"llama.cpp {quant}", llama_cpp_tps(path, prompt, args.tokens, args.threads), path.stat().st_size))
    print(f"model {model_dir}, {args.tokens} greedy tokens after 16, {args.threads} threads; copy bandwidth "
          f"{bandwidth:.1f} GB/s; baseline transformers fp32 {base:.1f} tokens/s (re-measured last)\n")  # fmt: skip
    print("| runtime, format | weights MB | tokens/s | vs transformers fp32 | % of bandwidth bound |")
    print("|---|---|---|---|---|")
    again, _ = transformers_tps(model_dir, prompt, args.tokens, torch.float32)
    reference = (base + again) / 2  # the baseline measured before and after the rest
    for label, tps, size in rows:
        bound = 100 * tps * size / (bandwidth * 1e9)  # bytes streamed per second against what memory can move
        print(f"| {label} | {size / 1e6:.1f} | {tps:.1f} | {tps / reference:.2f} | {bound:.0f}% |")


if __name__ == "__main__":
    main()
