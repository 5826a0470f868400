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


TRAIN = {
    "num_workers": 2,
    "micro_batch_size": 8,
    "warmup_steps": 1,
    "eval_every": 4,
    "eval_batches": 2,
    "checkpoint_every": 8,
    "log_every": 2,
}


def tiny_pipeline(output: Path, port: int, corpus: str = "shakespeare") -> dict:
    data = {"sources": [corpus], "max_chars_per_source": 100_000, "block_size": 64, "val_fraction": 0.05}
    return {
        "output": str(output),
        "stages": ["pretrain", "finetune", "sft", "sweep", "serve"],
        "prompts": ["ROMEO:"],
        "pretrain": {
            "sample_prompt": "",
            "model": {"name": "gpt-nano", "vocab_size": 512, "tokenizer_train_chars": 100_000},
            "data": data,
            "train": dict(TRAIN, max_steps=8, lr=3e-3),
        },
        # ZeRO-3 here: from_pretrained loads the pretrained directory straight into zero.Init partitions
        "finetune": {"sample_prompt": "", "data": data, "train": dict(TRAIN, max_steps=4, lr=1e-3, zero_stage=3)},
        "sft": {  # LoRA on the built-in chat set (the sft defaults) with a smaller rank and a slice of it
            "sample_prompt": "",
            "data": {"max_chars_per_source": 30_000, "block_size": 64, "val_fraction": 0.05},
            "lora": {"r": 4},
            "train": dict(TRAIN, max_steps=4, lr=1e-2),
        },
        "sweep": {
            "data": data,
            "measure": {"eval_blocks": 8, "calib_blocks": 4, "decode_tokens": 4},
            "search": {
                "algorithm": "grid",
                "methods": ["none"],
                "quants": ["none", "int8-weight"],
                "student_layers": [0, 2],  # and students of half the fine-tuned model's depth
                "distill_steps": [10],
            },
        },
        "serve": {"port": port, "app_name": "pipeline", "scaling": {"max_replicas": 1, "cpus_per_replica": 0.5}},
    }
