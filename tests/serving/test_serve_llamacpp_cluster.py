"""A GGUF export served by llama.cpp through the real Serve app over real HTTP: chosen from the directory's format,
the same OpenAI API (plain, streamed, batched, limits), and the same greedy text llama.cpp itself generates."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from minigpt_ray.cluster import free_port
from minigpt_ray.config import ConfigError
from minigpt_ray.config.serve import ServeJobConfig
from minigpt_ray.export import GGUF_FILE, export_gguf
from minigpt_ray.serving.app import deploy

pytestmark = pytest.mark.usefixtures("ray_cluster")
PROMPTS = ["中国人民", "经济", "今天天气", "在北京", "会议", "发展"]


@pytest.fixture(scope="module")
def gguf_endpoint(tiny_zh_model, tmp_path_factory):
    from ray import serve

    export = tmp_path_factory.mktemp("gguf") / "export"
    export_gguf(tiny_zh_model["dir"], export, "q8_0")  # model.gguf + tokenizer, no config.json
    cfg = ServeJobConfig(model=str(export), port=free_port(), app_name="gguf")
    cfg.scaling.max_replicas, cfg.scaling.cpus_per_replica = 1, 0.5
    cfg.limits.max_prompt_tokens, cfg.limits.max_new_tokens = 48, 64
    url = deploy(cfg.validate())
    yield url, export, cfg.port
    serve.shutdown()


def complete(url: str, **body) -> requests.Response:
    return requests.post(f"{url}/v1/completions", json=body, timeout=60)


def test_the_export_directory_is_served_by_llama_cpp(gguf_endpoint):
    url = gguf_endpoint[0]
    health = requests.get(f"{url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["runtime"] == "llama.cpp"


def test_greedy_text_equals_llama_cpp_own_generate(gguf_endpoint):
    import llama_cpp

    url, export, _ = gguf_endpoint
    llm = llama_cpp.Llama(model_path=str(export / GGUF_FILE), n_ctx=128, n_threads=1, verbose=False)
    for prompt in PROMPTS[:3]:
        body = complete(url, model="minigpt", prompt=prompt, max_tokens=20, temperature=0).json()
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
        tokens = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if token == llm.token_eos() or len(tokens) == 20:
                break
            tokens.append(token)
        expected = llm.detokenize(tokens).decode("utf-8", errors="replace").rstrip("\ufffd")
        assert body["choices"][0]["text"] == expected, prompt
        assert body["usage"]["completion_tokens"] == len(tokens)


def test_stream_batching_and_limits_work_as_with_pytorch(gguf_endpoint):
    url = gguf_endpoint[0]
    sequential = [complete(url, prompt=p, max_tokens=16, temperature=0).json()["choices"][0]["text"] for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        replies = list(pool.map(lambda p: complete(url, prompt=p, max_tokens=16, temperature=0), PROMPTS))
    assert [r.json()["choices"][0]["text"] for r in replies] == sequential
    assert max(int(r.headers["x-minigpt-batch-size"]) for r in replies) > 1
    with requests.post(
        f"{url}/v1/completions", json={"prompt": "经济", "max_tokens": 16, "temperature": 0, "stream": True}, timeout=60
    ) as reply:
        events = [line[6:] for line in reply.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    import json

    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == sequential[1]
    too_long = complete(url, prompt="经济" * 100, max_tokens=4)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    assert complete(url, prompt="经济", max_tokens=4, temperature=0).status_code == 200


def test_runtime_choice_is_checked_before_anything_starts(gguf_endpoint, tiny_zh_model):
    export = gguf_endpoint[1]
    with pytest.raises(ConfigError, match=r"^model: .* has no config.json .*runtime llama.cpp"):
        ServeJobConfig(model=str(export), runtime="torch").validate()
    not_llama = export.parent / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=300, n_positions=32)).save_pretrained(
        not_llama
    )
    with pytest.raises(ConfigError, match=r"^model: .* has no model.gguf for runtime llama.cpp and is not a Llama"):
        ServeJobConfig(model=str(not_llama), runtime="llama.cpp").validate()
    with pytest.raises(ConfigError, match=r"^runtime: .*gpus_per_replica must be 0"):
        cfg = ServeJobConfig(model=str(export), runtime="llama.cpp")
        cfg.scaling.gpus_per_replica = 1
        cfg.validate()


def test_a_pytorch_llama_directory_is_converted_for_llama_cpp(gguf_endpoint, tiny_zh_model):
    from ray import serve

    from minigpt_ray.modeling.tokenizer import load_tokenizer

    cfg = ServeJobConfig(model=tiny_zh_model["dir"], runtime="llama.cpp", port=gguf_endpoint[2])
    cfg.app_name, cfg.route_prefix, cfg.scaling.max_replicas, cfg.scaling.cpus_per_replica = "f16", "/f16", 1, 0.5
    url = deploy(cfg.validate())
    try:
        assert requests.get(f"{url}/health", timeout=10).json()["runtime"] == "llama.cpp"
        model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_zh_model["dir"]).eval(), load_tokenizer(cfg.model)
        for prompt in PROMPTS[:3]:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=12, do_sample=False)
            expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).rstrip("\ufffd")
            assert complete(url, prompt=prompt, max_tokens=12, temperature=0).json()["choices"][0]["text"] == expected
    finally:
        serve.delete("f16")
