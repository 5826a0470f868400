"""A race against nanoGPT's CPU recipe: held-out bits per character against whole-process wall time, one run.

  .venv/bin/python bench/race_nanogpt.py [--chars 1115394] [--config configs/shakespeare.yaml]

The text is the built-in `shakespeare` corpus (the package's plays, scene by scene, in file order), cut to
tiny-shakespeare's length and split as nanoGPT's `data/shakespeare_char/prepare.py` does: the first 90% to train on,
the last 10% held out. Both sides run as the processes users start, timed from outside until the model is on disk:
- nanoGPT: `bench/nanogpt_char.py` (a faithful re-implementation of its model.py and of train.py's CPU command for
  Shakespeare characters, 2,000 iterations; see that file);
- this project: `python jobs/finetune.py --config configs/shakespeare.yaml --data train.txt --output DIR`.

Both finished models are then scored on the whole held-out text the same way: consecutive windows of the model's
context, every token after a window's first predicted once, total negative log-likelihood over the characters those
tokens spell, in bits. nanoGPT's evaluation log gives its curve (bits per character against seconds), so the table
also shows where nanoGPT stood when the project had finished. Target: at equal wall time the project's model is
>= 0.3 bits/char better.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from nanogpt_char import GPT, GPTConfig  # noqa: E402

from minigpt_ray.data.corpora import shakespeare_documents  # noqa: E402


def shakespeare_text(chars: int) -> str:
    """The built-in `shakespeare` corpus (its plays scene by scene, in file order) as one text, cut to `chars`."""
    return "\n\n".join(shakespeare_documents())[:chars]


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


@torch.no_grad()
def bits_per_char(score, ids: list[int], context: int, decode) -> float:
    """Windows of context+1 tokens overlapping by one: every token after the first is predicted once."""
    nll, chars = 0.0, 0
    for start in range(0, len(ids) - 1, context):
        window = torch.tensor([ids[start : start + context + 1]])
        if window.size(1) < 2:
            break
        logits = score(window[:, :-1])
        nll += torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum").item()
        chars += len(decode(window[0, 1:].tolist()))
    return nll / chars / math.log(2)


def score_nanogpt(ckpt: Path, val_text: str) -> float:
    saved = torch.load(ckpt, map_location="cpu")
    config = GPTConfig(**saved["config"])
    model = GPT(config).eval()
    model.load_state_dict(saved["model"])
    stoi = {ch: i for i, ch in enumerate(saved["chars"])}
    ids = [stoi[c] for c in val_text]
    return bits_per_char(lambda x: model(x)[0], ids, config.block_size, lambda t: "".join(saved["chars"][i] for i in t))


def score_project(model_dir: Path, val_text: str) -> float:
    from transformers import AutoModelForCausalLM

    from minigpt_ray.modeling.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokenizer = load_tokenizer(str(model_dir))
    ids = tokenizer(val_text, add_special_tokens=False)["input_ids"]
    context = model.config.max_position_embeddings
    return bits_per_char(lambda x: model(input_ids=x).logits, ids, context, tokenizer.decode)


def nanogpt_at(log: list[dict], seconds: float) -> tuple[float, float] | None:
    """nanoGPT's last evaluation (20 batches, nats per character) within `seconds`: (seconds, bits/char)."""
    seen = [entry for entry in log if entry["seconds"] <= seconds]
    return (seen[-1]["seconds"], seen[-1]["val"] / math.log(2)) if seen else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=1_115_394, help="characters of text (tiny-shakespeare's size)")
    parser.add_argument("--config", default="configs/shakespeare.yaml")
    parser.add_argument("--max-iters", type=int, default=2000, help="nanoGPT's iterations")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minigpt-race-"))
    text = shakespeare_text(args.chars)
    cut = int(len(text) * 0.9)
    (work / "train.txt").write_text(text[:cut], encoding="utf-8")
    (work / "val.txt").write_text(text[cut:], encoding="utf-8")
    py = sys.executable
    nano_cmd = [py, "bench/nanogpt_char.py", "--train", str(work / "train.txt"), "--val", str(work / "val.txt")]
    nano_wall = timed(nano_cmd + ["--out", str(work / "nanogpt"), "--max-iters", str(args.max_iters)])
    ours_cmd = [py, "jobs/finetune.py", "--config", args.config, "--data", str(work / "train.txt")]
    ours_wall = timed(ours_cmd + ["--output", str(work / "ours")])
    val_text = text[cut:]
    nano_bpc = score_nanogpt(work / "nanogpt" / "ckpt.pt", val_text)
    ours_bpc = score_project(work / "ours" / "model", val_text)
    metrics = json.loads((work / "ours" / "metrics.json").read_text())
    log = json.loads((work / "nanogpt" / "log.json").read_text())
    print(f"\n{len(text):,} characters of Shakespeare, {len(val_text):,} held out\n")
    print("| model | wall s (process) | training s | held-out bits/char |\n|---|---|---|---|")
    print(f"| nanoGPT CPU recipe (4x128, chars, {args.max_iters} iters) | {nano_wall:.1f} | — | {nano_bpc:.3f} |")
    training = metrics["phase_seconds"]["training"]
    print(f"| minigpt_ray ({args.config}) | {ours_wall:.1f} | {training:.1f} | {ours_bpc:.3f} |")
    at = nanogpt_at(log, ours_wall)
    if at:
        print(
            f"\nnanoGPT at {at[0]:.0f} s (its last evaluation within the project's wall time): {at[1]:.3f} bits/char "
            "(20-batch estimate)"
        )
    curve = [(round(e["seconds"]), round(e["val"] / math.log(2), 3)) for e in log]
    print("nanoGPT's curve (s, bits/char, 20-batch estimates):", curve)
    gap = nano_bpc - ours_bpc
    equal = ours_wall <= nano_wall * 1.02
    print(
        f"project better by {gap:.3f} bits/char in {ours_wall / nano_wall:.2f}x nanoGPT's wall time "
        f"(target >= 0.3 at equal wall time): {'met' if gap >= 0.3 and equal else 'not met'}"
    )


if __name__ == "__main__":
    main()
