"""Helpers shared by the tests (imported as `from helpers import ...`; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tiny_run_config(output: Path, **train_overrides):
    """A small but real run: gpt-nano-sized model on a Shakespeare slice, a few seconds of steps per worker."""
    from minigpt_ray.config import TrainJobConfig

    cfg = TrainJobConfig(output=str(output), sample_prompt="")
    cfg.model.name = "gpt-nano"
    cfg.model.vocab_size = 512
    cfg.data.sources = ["shakespeare"]
    cfg.data.max_chars_per_source = 150_000
    cfg.data.block_size = 64
    cfg.data.val_fraction = 0.05
    cfg.model.tokenizer_train_chars = 150_000
    t = cfg.train
    t.num_workers, t.micro_batch_size, t.max_steps, t.warmup_steps, t.lr = 2, 8, 30, 3, 3e-3
    t.eval_every, t.checkpoint_every, t.eval_batches, t.log_every = 15, 15, 4, 5
    for key, value in train_overrides.items():
        setattr(t, key, value)
    return cfg.validate()


def tiny_llama_config(vocab_size: int, **extra):
    """A 2-layer Llama-style config whose widths (64, 128) suit int4 groups of 32 and N:M patterns."""
    from transformers import LlamaConfig

    settings = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128) | extra
    return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=64, tie_word_embeddings=True, **settings)


def train_tiny_model(texts: list[str], directory: Path, vocab_size: int = 512, steps: int = 150) -> dict:
    """A tiny Llama-style GPT trained briefly (plain PyTorch, ~10 s) on `texts`, saved as an HF dir with its
    tokenizer. Widths divisible by 32 so int4 groups and N:M patterns apply. Returns {"dir", "eval", "calib",
    "train", "prompt"}: the data dict the compression code takes."""
    import torch
    from transformers import AutoModelForCausalLM

    from minigpt_ray.compress import CalibrationData
    from minigpt_ray.data.corpora import Document, split_documents
    from minigpt_ray.data.packing import pack_blocks, tokenize_texts
    from minigpt_ray.modeling.tokenizer import save_tokenizer, train_bpe

    docs = [Document(text=t, source="test") for t in texts if t.strip()]
    train_docs, val_docs = split_documents(docs, 0.1)
    tokenizer = train_bpe([d.text for d in train_docs], vocab_size)
    train = torch.from_numpy(pack_blocks(tokenize_texts(tokenizer, [d.text for d in train_docs]), 64)).long()
    val = torch.from_numpy(pack_blocks(tokenize_texts(tokenizer, [d.text for d in val_docs]), 64)).long()
    torch.manual_seed(0)
    config = tiny_llama_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = train[torch.randint(len(train), (16,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory)
    data = CalibrationData(eval_blocks=val[:24], calib_blocks=train[:8], train_blocks=train, prompt_ids=val[:1, :8])
    return {"dir": str(directory), "data": data}
