"""Byte-level BPE tokenizer: trained on the training documents for a preset, loaded from the model directory
otherwise. Byte-level means every string round-trips exactly (no unknown token, no normalisation), and BPE merges
learned on Chinese text turn the 3-byte UTF-8 characters into single tokens and common words into one."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML-style turns for the presets' tokenizers, each ended by EOS (one token: a reply stops where the model emits
it). The role markers are plain text, so the vocabulary is the same as without a template."""


def sample_texts(texts: list[str], max_chars: int, seed: int) -> list[str]:
    """A seeded sample of whole documents totalling about max_chars (all of them when max_chars is 0)."""
    if not max_chars or sum(map(len, texts)) <= max_chars:
        return texts
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    picked, total = [], 0
    for index in order:
        picked.append(texts[index])
        total += len(texts[index])
        if total >= max_chars:
            break
    return picked


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE (no prefix space, so decode(encode(s)) == s for any s)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    trained = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )
    trained.chat_template = CHAT_TEMPLATE  # saved with it; /v1/chat/completions renders messages through it
    return trained


def load_tokenizer(model_dir_or_id: str) -> PreTrainedTokenizerBase:
    """The tokenizer shipped with a model directory or hub id; a pad token is set to EOS when it has none."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir_or_id, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {model_dir_or_id} has no EOS token to separate documents")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> None:
    tokenizer.save_pretrained(str(directory))
