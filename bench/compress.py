"""Compression benchmark: every method on one trained model, as ratios against the uncompressed model measured in
the same run (decode speed against a baseline decode timed right before each candidate: machine speed drifts).

  .venv/bin/python bench/compress.py [--model runs/finetune/model] [--data zh-reviews] [--recovery-steps 100]

Prints a markdown table (perplexity ratio, weights-file bytes ratio, linear-weight bytes ratio, decode tokens/s
ratio at batch 1) and the issue's targets: int8 weight-only <= +1% perplexity at <= 0.30x linear bytes; int4
group-wise <= +8% at <= 0.18x; Wanda 50% no worse than magnitude 50%.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt_ray.compress import CandidateSpec, load_candidate, make_candidate  # noqa: E402
from minigpt_ray.compress.candidate import decode_tokens_per_s  # noqa: E402
from minigpt_ray.config.sweep import SweepJobConfig  # noqa: E402
from minigpt_ray.sweep.prepare import prepare_sweep  # noqa: E402


def candidates(recovery: int) -> list[CandidateSpec]:
    return [
        CandidateSpec(quant="int8-weight"),
        CandidateSpec(quant="int8-dynamic"),
        CandidateSpec(quant="int4-weight", group_size=32),
        CandidateSpec(quant="int4-weight", group_size=128),
        CandidateSpec("magnitude", 0.5),
        CandidateSpec("magnitude-global", 0.5),
        CandidateSpec("wanda", 0.5),
        CandidateSpec("magnitude", 0, "2:4"),
        CandidateSpec("wanda", 0, "2:4"),
        CandidateSpec("wanda", 0, "4:8"),
        CandidateSpec("wanda", 0.5, recovery_steps=recovery),
        CandidateSpec("structured", 0.25),
        CandidateSpec("structured", 0.25, recovery_steps=recovery),
        CandidateSpec("wanda", 0.5, quant="int8-weight"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/finetune/model")
    parser.add_argument("--data", default="zh-reviews")
    parser.add_argument("--recovery-steps", type=int, default=100)
    parser.add_argument("--eval-blocks", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = SweepJobConfig(model=args.model)
    cfg.data.sources, cfg.measure.eval_blocks = [args.data], args.eval_blocks
    inputs = prepare_sweep(cfg.validate())
    base_model, tokenizer, data = inputs.base, inputs.tokenizer, inputs.data
    out = Path(tempfile.mkdtemp(prefix="bench_compress_"))
    base = make_candidate(base_model, tokenizer, CandidateSpec(), out / "base", data)
    base_loaded = load_candidate(out / "base")[0]
    print(
        f"model {args.model}: {base['params']:,} params, perplexity {base['perplexity']:.3f} on "
        f"{len(data.eval_blocks)} x {data.eval_blocks.shape[1]} tokens of {args.data}, "
        f"weights {base['weights_bytes']:,} B "
        f"(linear {base['linear_bytes']:,} B), decode {base['decode_tokens_per_s']:.0f} tokens/s\n"
    )
    print("| candidate | perplexity | ppl ratio | weights bytes ratio | linear bytes ratio | decode tok/s ratio |")
    print("|---|---|---|---|---|---|")
    results = {}
    for i, spec in enumerate(candidates(args.recovery_steps)):
        m = make_candidate(base_model, tokenizer, spec, out / f"c{i}", data)
        reference = decode_tokens_per_s(base_loaded, data.prompt_ids)
        results[m["label"]] = m
        print(
            f"| {m['label']} | {m['perplexity']:.3f} | {m['perplexity'] / base['perplexity']:.4f} | "
            f"{m['weights_bytes'] / base['weights_bytes']:.3f} | {m['linear_bytes'] / base['linear_bytes']:.3f} | "
            f"{m['decode_tokens_per_s'] / reference:.2f} |",
            flush=True,
        )
    print()
    _targets(results, base)


def _targets(results: dict, base: dict) -> None:
    def ratio(label, key):
        return results[label][key] / base[key]

    checks = [
        (
            "int8 weight-only: ppl <= 1.01x, linear bytes <= 0.30x",
            ratio("int8-weight", "perplexity") <= 1.01 and ratio("int8-weight", "linear_bytes") <= 0.30,
        ),
        (
            "int4 g32: ppl <= 1.08x, linear bytes <= 0.18x",
            ratio("int4-weight g32", "perplexity") <= 1.08 and ratio("int4-weight g32", "linear_bytes") <= 0.18,
        ),
        (
            "int4 g128: ppl <= 1.08x, linear bytes <= 0.18x",
            ratio("int4-weight g128", "perplexity") <= 1.08 and ratio("int4-weight g128", "linear_bytes") <= 0.18,
        ),
        (
            "wanda 50% ppl <= magnitude 50% ppl",
            results["wanda 50%"]["perplexity"] <= results["magnitude 50%"]["perplexity"],
        ),
    ]
    for text, ok in checks:
        print(f"target {'met' if ok else 'MISSED'}: {text}")


if __name__ == "__main__":
    main()
