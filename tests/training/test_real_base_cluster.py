"""The default pretrained base, for real (SmolLM2-135M-Instruct from its registry package, installed by
scripts/setup.sh): converted from its GGUF, a few LoRA steps under ZeRO-2 on two Ray Train workers, exported to GGUF,
answered by llama.cpp's own chat completion and by the Serve app's /v1/chat/completions over HTTP."""

from __future__ import annotations

import pytest
import requests

from minigpt_ray.cluster import free_port
from minigpt_ray.config import ServeJobConfig, TrainJobConfig
from minigpt_ray.config.bases import DEFAULT_BASE
from minigpt_ray.export import export_gguf
from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.training.trainer import run_training

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tuned_base(ray_cluster, tmp_path_factory):
    output = tmp_path_factory.mktemp("real_base") / "lora"
    cfg = TrainJobConfig(output=str(output), sample_prompt="")
    cfg.model.name = DEFAULT_BASE
    cfg.data.sources, cfg.data.max_chars_per_source, cfg.data.block_size = ["shakespeare"], 40_000, 64
    cfg.lora.r, cfg.lora.lora_alpha = 8, 16.0
    t = cfg.train
    t.num_workers, t.zero_stage, t.micro_batch_size, t.max_steps, t.warmup_steps, t.lr = 2, 2, 2, 4, 1, 2e-3
    t.eval_every, t.eval_batches, t.checkpoint_every, t.log_every = 4, 2, 4, 1
    return output, run_training(cfg.validate())


def test_lora_on_the_default_base_trains_a_small_fraction_and_learns(tuned_base):
    _, metrics = tuned_base
    assert metrics["params"] > 130e6 and metrics["trainable_params"] <= 0.02 * metrics["params"]
    assert metrics["zero_stage"] == 2 and metrics["num_workers"] == 2
    assert metrics["final_val_loss"] < metrics["initial_val_loss"] < 5.0  # a pretrained model: far below ln(49152)


def test_its_gguf_answers_chat_in_llama_cpp_and_over_http(tuned_base):
    from llama_cpp import Llama
    from ray import serve

    output, _ = tuned_base
    path = export_gguf(output / "model", output / "export", "f16")  # f16: the answer is not a near-tie
    llm = Llama(str(path), n_ctx=256, n_threads=2, verbose=False)
    reply = llm.create_chat_completion(QUESTION, max_tokens=32, temperature=0)["choices"][0]
    # The template and the ChatML markers came with the file: the reply is text, and it ends at <|im_end|>.
    assert reply["message"]["content"].strip() and reply["finish_reason"] == "stop"
    # What the server computes: the model's own template rendered by its HF tokenizer, decoded greedily.
    rendered = load_tokenizer(str(output / "export")).apply_chat_template(
        QUESTION, tokenize=False, add_generation_prompt=True
    )
    ids = llm.tokenize(rendered.encode(), add_bos=False, special=True)
    direct = llm.create_completion(ids, max_tokens=32, temperature=0)["choices"][0]["text"]
    del llm
    cfg = ServeJobConfig(model=str(output / "export"), port=free_port())
    cfg.scaling.max_replicas, cfg.scaling.cpus_per_replica = 1, 1
    from minigpt_ray.serving.app import deploy

    url = deploy(cfg.validate())
    try:
        body = {"messages": QUESTION, "max_tokens": 32, "temperature": 0}
        answer = requests.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
        served = answer["choices"][0]["message"]["content"].strip()
        # The server renders the same prompt into the same tokens llama.cpp does (ChatML markers one control token
        # each). The greedy text itself may part from `direct` where two tokens nearly tie: the server
        # decodes in llama.cpp batches, whose kernels round differently from a single sequence's.
        assert served and direct.strip()
        assert answer["usage"]["prompt_tokens"] == len(ids) < len(rendered) // 2
        assert requests.get(f"{url}/health", timeout=30).json()["format"] == "GGUF F16"
    finally:
        serve.shutdown()
