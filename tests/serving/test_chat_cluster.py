"""/v1/chat/completions over HTTP against a real Serve app: the official `openai` client's chat calls (plain and
streamed) work unchanged and answer exactly what /v1/completions answers for the rendered conversation; bad chat
input gets a 400 in OpenAI's shape naming the field."""

from __future__ import annotations

import pytest
import requests

from minigpt_ray.cluster import free_port
from minigpt_ray.config import ServeJobConfig
from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.serving.app import deploy

pytestmark = pytest.mark.usefixtures("ray_cluster")
MESSAGES = [{"role": "user", "content": "经济"}]  # the tiny model has 64 positions; roles are covered in test_chat


@pytest.fixture(scope="module")
def chat_endpoint(tiny_zh_model):
    from ray import serve

    cfg = ServeJobConfig(model=tiny_zh_model["dir"], port=free_port())
    cfg.scaling.max_replicas, cfg.scaling.cpus_per_replica = 1, 0.5
    cfg.limits.max_prompt_tokens, cfg.limits.max_new_tokens = 128, 32
    url = deploy(cfg.validate())
    yield url, load_tokenizer(tiny_zh_model["dir"])
    serve.shutdown()


def test_openai_client_chat_plain_and_streamed(chat_endpoint):
    from openai import OpenAI

    url, tokenizer = chat_endpoint
    client = OpenAI(base_url=f"{url}/v1", api_key="not-needed")
    reply = client.chat.completions.create(model="minigpt", messages=MESSAGES, max_tokens=8, temperature=0, seed=1)
    rendered = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    direct = requests.post(
        f"{url}/v1/completions", json={"prompt": rendered, "max_tokens": 8, "temperature": 0}, timeout=60
    ).json()
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == direct["choices"][0]["text"]
    assert reply.choices[0].finish_reason == direct["choices"][0]["finish_reason"]
    assert reply.usage.prompt_tokens == direct["usage"]["prompt_tokens"] == len(tokenizer(rendered)["input_ids"])
    chunks = list(
        client.chat.completions.create(
            model="minigpt",
            messages=MESSAGES,
            max_completion_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    ],
)
def test_bad_chat_input_is_a_400_naming_the_field(chat_endpoint, body, param):
    url, _ = chat_endpoint
    reply = requests.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error"
    ok = requests.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200  # the replica stays up
