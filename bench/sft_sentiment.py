"""Supervised fine-tuning on the built-in chat set, judged through the served chat API: how often the model answers
正面/负面 correctly for held-out reviews, before and after, measured in one run.

  .venv/bin/python bench/sft_sentiment.py [--model runs/pipeline/pretrain/model] [--steps 1500] [--lr 2e-3]
                                         [--reviews 200]

The model (default: the quickstart's pretrained mini GPT) is fine-tuned on `zh-instruct` (Ray Train +
DeepSpeed ZeRO-2, bf16-mixed, only the assistant's replies trained). Both the model and the fine-tuned one
are then served (Ray Serve, PyTorch runtime) and asked "这条评论是正面还是负面？" for held-out reviews (the validation
split of `zh-instruct`, which training never sees, that fit the model's context) through
`/v1/chat/completions`, greedy, 4 tokens; an answer counts when it starts with the right label. The held-out
reviews are half positive, half negative (always giving one label scores 50%). Target: >= 80% after SFT.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt_ray.cluster import free_port  # noqa: E402
from minigpt_ray.config import ServeJobConfig, TrainJobConfig  # noqa: E402
from minigpt_ray.data.corpora import SENTIMENT_QUESTION, source_documents, split_documents  # noqa: E402
from minigpt_ray.serving.app import deploy  # noqa: E402
from minigpt_ray.training.trainer import run_training  # noqa: E402

VAL_FRACTION = 0.05
ANSWER_TOKENS = 4


def sft(model: str, output: Path, steps: int, lr: float) -> dict:
    cfg = TrainJobConfig(output=str(output), sample_prompt="")
    cfg.model.name = model
    cfg.data.sources, cfg.data.block_size, cfg.data.val_fraction = ["zh-instruct"], 128, VAL_FRACTION
    t = cfg.train
    t.num_workers, t.micro_batch_size, t.max_steps, t.warmup_steps, t.lr = 2, 16, steps, steps // 10, lr
    t.eval_every, t.checkpoint_every, t.log_every, t.eval_batches = steps, steps, 50, 0
    return run_training(cfg.validate())


def held_out_reviews(model: str, limit: int) -> list[tuple[str, str]]:
    """(review question, label) of sentiment conversations in the validation split whose rendered prompt and answer
    fit in the model's context, balanced between the labels."""
    from transformers import AutoConfig

    from minigpt_ray.modeling.model import max_positions
    from minigpt_ray.modeling.tokenizer import load_tokenizer

    tokenizer, room = load_tokenizer(model), max_positions(AutoConfig.from_pretrained(model)) - ANSWER_TOKENS
    _, val = split_documents(source_documents("zh-instruct"), VAL_FRACTION)
    pairs = []
    for doc in val:
        question, label = doc.messages[0][1], doc.messages[-1][1]
        messages = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if question.startswith(SENTIMENT_QUESTION) and length <= room:
            pairs.append((question, label))
    # As many positive as negative reviews, so always answering one label scores 50%.
    per_label = min(limit // 2, *(sum(label == name for _, label in pairs) for name in ("正面", "负面")))
    return [p for p in pairs if p[1] == "正面"][:per_label] + [p for p in pairs if p[1] == "负面"][:per_label]


def accuracy(model_dir: str, port: int, reviews: list[tuple[str, str]]) -> float:
    url = deploy(ServeJobConfig(model=model_dir, port=port, runtime="torch").validate())
    correct = 0
    for question, label in reviews:
        reply = requests.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": question}], "max_tokens": ANSWER_TOKENS, "temperature": 0},
            timeout=120,
        )
        if reply.status_code != 200:
            raise SystemExit(f"error: {reply.status_code} {reply.text}")
        correct += reply.json()["choices"][0]["message"]["content"].strip().startswith(label)
    return correct / len(reviews)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/pipeline/pretrain/model", help="the model to fine-tune")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--reviews", type=int, default=200, help="held-out reviews asked")
    args = parser.parse_args()
    from ray import serve

    work = Path(tempfile.mkdtemp(prefix="minigpt-sft-"))
    metrics = sft(str(Path(args.model).resolve()), work / "sft", args.steps, args.lr)
    reviews = held_out_reviews(str(Path(args.model).resolve()), args.reviews)
    port = free_port()
    before = accuracy(str(Path(args.model).resolve()), port, reviews)
    after = accuracy(str(work / "sft" / "model"), port, reviews)
    serve.shutdown()
    majority = max(sum(label == "正面" for _, label in reviews), sum(label == "负面" for _, label in reviews))
    print(
        f"\nSFT: {args.steps} steps, {metrics['train_seconds']:.0f} s of training, reply loss "
        f"{metrics['initial_val_loss']:.3f} -> {metrics['final_val_loss']:.3f}"
    )
    print("| model | correct 正面/负面 on held-out reviews |\n|---|---|")
    print(f"| before SFT | {before:.1%} |\n| after SFT | {after:.1%} |")
    print(f"| (majority label) | {majority / len(reviews):.1%} |")
    print(f"{len(reviews)} reviews; target >= 80% after SFT: {'met' if after >= 0.8 else 'not met'}")


if __name__ == "__main__":
    main()
