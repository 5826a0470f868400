"""nanoGPT's character-level Shakespeare recipe on CPU, re-implemented for bench/race_nanogpt.py.

  .venv/bin/python bench/nanogpt_char.py --train train.txt --val val.txt --out DIR [--max-iters 2000]

A faithful re-implementation (nanoGPT itself is not on the package registries) of karpathy/nanoGPT's `model.py`
(GPT-2 architecture: learned position embeddings, pre-LayerNorm blocks with bias, GELU MLP of 4x width, weight
tying, N(0, 0.02) init with 0.02/sqrt(2 * n_layer) for residual projections) and of `train.py` run as its README's
CPU command:

  python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
      --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
      --dropout=0.0

that is: characters as tokens (vocabulary from the whole text), AdamW lr 1e-3 (betas 0.9/0.99, weight decay 0.1 on
2-D weights), 100 warm-up iterations, cosine decay to 1e-4, gradient clipping at 1.0, fp32, evaluation every 250
iterations on 20 batches, the checkpoint written when validation improves. Writes `ckpt.pt` and `log.json`
(iteration, seconds since start, train/val loss at each evaluation) to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 65
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # train_shakespeare_char.py sets bias = False


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def optimizer_for(model: GPT, lr: float) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def lr_at(it: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100, decay_iters: int = 2000) -> float:
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def get_batch(data: torch.Tensor, block: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - block, (batch,))
    x = torch.stack([data[i : i + block] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block] for i in ix])
    return x, y


@torch.no_grad()
def estimate_loss(model: GPT, splits: dict, block: int, batch: int, iters: int = 20) -> dict:
    model.eval()
    out = {name: sum(model(*get_batch(data, block, batch))[1].item() for _ in range(iters)) / iters
           for name, data in splits.items()}  # fmt: skip
    model.train()
    return out


def train(train_text: str, val_text: str, out: Path, max_iters: int, started: float) -> None:
    torch.manual_seed(1337)
    chars = sorted(set(train_text + val_text))  # nanoGPT's prepare.py: the vocabulary of the whole input
    stoi = {ch: i for i, ch in enumerate(chars)}
    splits = {name: torch.tensor([stoi[c] for c in text], dtype=torch.long)
              for name, text in (("train", train_text), ("val", val_text))}  # fmt: skip
    config = GPTConfig(vocab_size=len(chars))
    model = GPT(config)
    optimizer = optimizer_for(model, 1e-3)
    log, best = [], float("inf")
    for it in range(max_iters + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, decay_iters=max_iters)
        if it % 250 == 0 or it == max_iters:
            losses = estimate_loss(model, splits, config.block_size, 12)
            log.append({"iter": it, "seconds": time.time() - started, **losses})
            print(f"iter {it}: train {losses['train']:.4f} val {losses['val']:.4f}", flush=True)
            if losses["val"] < best:
                best = losses["val"]
                torch.save({"model": model.state_dict(), "config": config.__dict__, "chars": chars}, out / "ckpt.pt")
        if it == max_iters:
            break
        _, loss = model(*get_batch(splits["train"], config.block_size, 12))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    (out / "log.json").write_text(json.dumps(log))


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-iters", type=int, default=2000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    read = lambda path: Path(path).read_text(encoding="utf-8")  # noqa: E731
    train(read(args.train), read(args.val), out, args.max_iters, started)


if __name__ == "__main__":
    main()
