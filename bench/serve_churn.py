"""KV-cache width under churn: one long request decoded beside a stream of short requests with long prompts, with
the continuous-batching generator's repacking on (the default) and off, measured in the same run.

  .venv/bin/python bench/serve_churn.py [--anchor-tokens 240] [--join-every 3] [--prompt-tokens 128]

Each join pads every running row by the joining prompt's width in the middle of its history; trimming leading
all-padding columns cannot remove those, so without repacking the cache grows by a prompt's width per join. The
bench reports the widest and mean cache (columns and bytes), wall time and the anchor's tokens/s for both, and
checks that both decode the same greedy tokens. Model: a random-init Llama (hidden 512, 8 layers, 29M parameters;
random weights cost the same per step as trained ones), plain PyTorch, no Ray.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt_ray.serving import generation  # noqa: E402
from minigpt_ray.serving.generation import BatchGenerator, GenerationRequest  # noqa: E402


def random_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8000,
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        intermediate_size=1408,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def requests_for(args) -> tuple[GenerationRequest, list[GenerationRequest]]:
    generator = torch.Generator().manual_seed(1)

    def prompt(n: int) -> list[int]:
        return torch.randint(10, 8000, (n,), generator=generator).tolist()

    anchor = GenerationRequest(prompt(32), max_tokens=args.anchor_tokens, temperature=0.0, ignore_eos=True)
    joins = args.anchor_tokens // args.join_every
    churn = [
        GenerationRequest(prompt(args.prompt_tokens), max_tokens=args.join_tokens, temperature=0.0, ignore_eos=True)
        for _ in range(joins)
    ]
    return anchor, churn


def cache_bytes(batch: BatchGenerator) -> int:
    if batch.cache is None:
        return 0
    return sum(t.numel() * t.element_size() for layer in batch.cache.layers for t in (layer.keys, layer.values))


def run(model, anchor: GenerationRequest, churn: list[GenerationRequest], join_every: int, repack: bool) -> dict:
    """Decode until every request is done, a join every `join_every` steps; returns widths, bytes, time, tokens."""
    saved = generation.REPACK_SLACK
    generation.REPACK_SLACK = saved if repack else 10**9  # off: only trimming of leading all-padding columns
    try:
        batch = BatchGenerator(model, [anchor], pad_id=0, eos_id=None)
        pending, step, widths, peak_bytes, anchor_tokens = list(churn), 0, [], 0, []
        started = time.perf_counter()
        while batch.active:
            if pending and step % join_every == 0:
                batch.add([pending.pop(0)])
            for row, token in zip(batch.rows, batch.step(), strict=True):
                if token is not None and row.request is anchor:
                    anchor_tokens.append(token)
            batch.compact()
            if batch.mask is not None:
                widths.append(batch.mask.shape[1])
                peak_bytes = max(peak_bytes, cache_bytes(batch))
            step += 1
        seconds = time.perf_counter() - started
    finally:
        generation.REPACK_SLACK = saved
    return {
        "widest": max(widths),
        "mean_width": sum(widths) / len(widths),
        "peak_cache_mb": peak_bytes / 2**20,
        "seconds": seconds,
        "anchor_tokens_per_s": len(anchor_tokens) / seconds,
        "tokens": anchor_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchor-tokens", type=int, default=240, help="tokens the long request decodes")
    parser.add_argument("--join-every", type=int, default=3, help="steps between two joining requests")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt length of each joining request")
    parser.add_argument("--join-tokens", type=int, default=4, help="tokens each joining request decodes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = random_llama()
    anchor, churn = requests_for(args)
    run(model, anchor, churn[:4], args.join_every, repack=True)  # warm-up: allocator, kernels
    off = run(model, anchor, churn, args.join_every, repack=False)
    on = run(model, anchor, churn, args.join_every, repack=True)
    same = on["tokens"] == off["tokens"]
    print(
        f"{len(churn)} joins of {args.prompt_tokens}-token prompts beside a {args.anchor_tokens}-token request "
        f"(a join every {args.join_every} steps), {torch.get_num_threads()} threads; same tokens: {same}"
    )
    print("| repack | widest cache (columns) | mean width | peak KV cache MB | wall s | anchor tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, result in (("off (trim only)", off), (f"on (slack {generation.REPACK_SLACK})", on)):
        print(
            f"| {name} | {result['widest']} | {result['mean_width']:.0f} | {result['peak_cache_mb']:.1f} | "
            f"{result['seconds']:.1f} | {result['anchor_tokens_per_s']:.1f} |"
        )
    print(
        f"repack vs trim only: widest {on['widest'] / off['widest']:.3f}x, peak cache "
        f"{on['peak_cache_mb'] / off['peak_cache_mb']:.3f}x, wall {on['seconds'] / off['seconds']:.2f}x"
    )
    if not same:
        raise SystemExit("error: repacking changed the decoded tokens")


if __name__ == "__main__":
    main()
