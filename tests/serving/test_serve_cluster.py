"""Real HTTP against a real Serve app on the session's local Ray: OpenAI-compatible completions (plain, streamed,
through the official client), batching, the bad-input matrix, and autoscaling up and back down."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from minigpt_ray.cluster import free_port
from minigpt_ray.compress import CandidateSpec, load_candidate, make_candidate
from minigpt_ray.config.serve import ServeJobConfig
from minigpt_ray.serving.app import deploy

pytestmark = pytest.mark.usefixtures("ray_cluster")
PROMPTS = ["中国人民", "经济", "今天天气", "在北京", "会议", "发展"]


def serve_config(model_dir: str, port: int, **scaling) -> ServeJobConfig:
    cfg = ServeJobConfig(model=model_dir, port=port)
    cfg.scaling.max_replicas, cfg.scaling.cpus_per_replica = 1, 0.5
    cfg.batching.max_batch_size, cfg.batching.batch_wait_timeout_s = 8, 0.05
    cfg.limits.max_prompt_tokens, cfg.limits.max_new_tokens, cfg.limits.max_body_bytes = 48, 64, 4096
    for key, value in scaling.items():
        setattr(cfg.scaling, key, value)
    return cfg.validate()


@pytest.fixture(scope="module")
def endpoint(tiny_zh_model, tmp_path_factory):
    """The sweep's artifact format on the serving path: an int8 candidate of the tiny Chinese model."""
    from ray import serve
    from transformers import AutoModelForCausalLM

    from minigpt_ray.modeling.tokenizer import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_zh_model["dir"]).eval()
    candidate = tmp_path_factory.mktemp("serve") / "candidate"
    make_candidate(
        base,
        load_tokenizer(tiny_zh_model["dir"]),
        CandidateSpec(quant="int8-weight"),
        candidate,
        tiny_zh_model["data"],
        decode_tokens=4,
    )
    url = deploy(serve_config(str(candidate), free_port()))
    yield url, str(candidate)
    serve.shutdown()


def complete(url: str, **body) -> requests.Response:
    return requests.post(f"{url}/v1/completions", json=body, timeout=60)


def stream(url: str, **body) -> list[dict]:
    events = []
    with requests.post(f"{url}/v1/completions", json=dict(body, stream=True), stream=True, timeout=60) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines(decode_unicode=False):
            if line.startswith(b"data: "):
                payload = line[6:].decode("utf-8")  # every event is valid UTF-8 on its own
                events.append({"done": True} if payload == "[DONE]" else json.loads(payload))
    return events


def test_health_and_models(endpoint):
    url, _ = endpoint
    health = requests.get(f"{url}/health", timeout=10).json()
    # The embedded default ingress: HAProxy forwards to an HTTP server inside the replica (no proxy actor hop).
    assert health["status"] == "ok" and health["ingress"] == "haproxy"
    models = requests.get(f"{url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["minigpt"]


def test_greedy_completion_equals_direct_generate(endpoint):
    url, candidate = endpoint
    reply = complete(url, model="minigpt", prompt="中国人民", max_tokens=20, temperature=0)
    assert reply.status_code == 200
    body = reply.json()
    model, tokenizer, _ = load_candidate(candidate)
    ids = tokenizer("中国人民", return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=20,
        do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).rstrip("\ufffd")
    assert body["choices"][0]["text"] == expected
    assert body["usage"]["prompt_tokens"] == ids.shape[1] and body["usage"]["completion_tokens"] <= 20
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert complete(url, prompt="中国人民", max_tokens=20, temperature=0).json()["choices"][0]["text"] == expected


def test_stream_concatenates_to_the_non_streamed_text_in_chinese(endpoint):
    url, _ = endpoint
    for prompt in ("中国人民", "经济"):
        full = complete(url, prompt=prompt, max_tokens=30, temperature=0).json()["choices"][0]["text"]
        events = stream(url, prompt=prompt, max_tokens=30, temperature=0)
        assert events[-1] == {"done": True}
        pieces = [e["choices"][0]["text"] for e in events[:-1]]
        assert "".join(pieces) == full and any("\u4e00" <= c <= "\u9fff" for c in full)
        assert all("\ufffd" not in p for p in pieces)
        assert events[-2]["choices"][0]["finish_reason"] in ("length", "stop")


def test_official_openai_client_works_unchanged(endpoint):
    from openai import OpenAI

    url, _ = endpoint
    client = OpenAI(base_url=f"{url}/v1", api_key="not-needed")
    assert [m.id for m in client.models.list()] == ["minigpt"]
    reply = client.completions.create(model="minigpt", prompt="经济", max_tokens=12, temperature=0, seed=1)
    direct = complete(url, prompt="经济", max_tokens=12, temperature=0).json()["choices"][0]["text"]
    assert reply.choices[0].text == direct
    streamed = client.completions.create(model="minigpt", prompt="经济", max_tokens=12, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == direct


def test_concurrent_requests_are_batched_and_equal_unbatched(endpoint):
    url, _ = endpoint
    sequential = [complete(url, prompt=p, max_tokens=16, temperature=0).json()["choices"][0]["text"] for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        replies = list(pool.map(lambda p: complete(url, prompt=p, max_tokens=16, temperature=0), PROMPTS))
    assert [r.json()["choices"][0]["text"] for r in replies] == sequential
    assert max(int(r.headers["x-minigpt-batch-size"]) for r in replies) > 1


def test_seeded_sampling_is_reproducible(endpoint):
    url, _ = endpoint
    texts = {
        complete(url, prompt="经济", max_tokens=12, temperature=0.9, top_p=0.9, top_k=40, seed=5).json()["choices"][0][
            "text"
        ]
        for _ in range(2)
    }
    assert len(texts) == 1


BAD = [
    ("malformed JSON", b'{"prompt": "hi"', 400),
    ("missing prompt", b'{"max_tokens": 4}', 400),
    ("empty prompt", b'{"prompt": ""}', 400),
    ("prompt not a string", b'{"prompt": 42}', 400),
    ("max_tokens 0", b'{"prompt": "hi", "max_tokens": 0}', 400),
    ("max_tokens over cap", b'{"prompt": "hi", "max_tokens": 65}', 400),
    ("max_tokens a string", b'{"prompt": "hi", "max_tokens": "4"}', 400),
    ("temperature < 0", b'{"prompt": "hi", "temperature": -1}', 400),
    ("top_p 0", b'{"prompt": "hi", "top_p": 0}', 400),
    ("top_p > 1", b'{"prompt": "hi", "top_p": 1.1}', 400),
    ("body too large", b'{"prompt": "' + b"a" * 5000 + b'"}', 413),
    ("invalid UTF-8", b'{"prompt": "caf\xe9"}', 400),
    ("not an object", b"[1]", 400),
    ("unknown model", b'{"prompt": "hi", "model": "gpt-4"}', 404),
    ("prompt too long", json.dumps({"prompt": "中国人民" * 40}).encode(), 400),
    ("past the context window", json.dumps({"prompt": "中国人民" * 3, "max_tokens": 60}).encode(), 400),  # 64 positions
    ("unimplemented penalty", b'{"prompt": "hi", "presence_penalty": 1}', 400),
    ("unimplemented logit_bias", b'{"prompt": "hi", "logit_bias": {"3": 5}}', 400),
    ("stream_options without stream", b'{"prompt": "hi", "stream_options": {"include_usage": true}}', 400),
]


def test_bad_inputs_get_4xx_json_and_the_replica_stays_up(endpoint):
    url, _ = endpoint
    for name, raw, status in BAD:
        reply = requests.post(
            f"{url}/v1/completions", data=raw, headers={"Content-Type": "application/json"}, timeout=30
        )
        assert reply.status_code == status, (name, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], name

    def chunked():  # no Content-Length: the limit must hold while the body is read
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"a" * 100
        yield b'"}'

    reply = requests.post(f"{url}/v1/completions", data=chunked(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "body_too_large"
    for reply, status in ((requests.get(f"{url}/v1/completions", timeout=10), 405), (requests.get(f"{url}/nope"), 404)):
        assert reply.status_code == status and reply.json()["error"]["type"] == "invalid_request_error"
    assert complete(url, prompt="中国人民", max_tokens=4, temperature=0).status_code == 200


def test_request_timeout_answers_504_and_ends_a_stream_with_an_error_event(tiny_zh_model, endpoint):
    from ray import serve

    port = int(endpoint[0].rsplit(":", 1)[1])
    cfg = serve_config(tiny_zh_model["dir"], port)
    cfg.app_name, cfg.route_prefix, cfg.limits.request_timeout_s = "slow", "/slow", 0.01  # 48 tokens take longer
    url = deploy(cfg)
    try:
        reply = complete(url, prompt="中国人民", max_tokens=48, temperature=0)
        assert reply.status_code == 504 and reply.json()["error"]["code"] == "timeout"
        events = stream(url, prompt="中国人民", max_tokens=48, temperature=0)
        assert events[-1] == {"done": True} and events[-2]["error"]["code"] == "timeout"
        assert not any(e.get("choices", [{}])[0].get("finish_reason") for e in events[:-2])  # cut, not finished
        assert requests.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    finally:
        serve.delete("slow")


def test_autoscaling_rises_to_max_and_returns_to_min(tiny_zh_model, endpoint):
    from ray import serve

    port = int(endpoint[0].rsplit(":", 1)[1])
    cfg = serve_config(
        tiny_zh_model["dir"],
        port,
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        upscale_delay_s=0.5,
        downscale_delay_s=2,
        metrics_window_s=2,
        cpus_per_replica=0.25,
    )
    cfg.app_name, cfg.route_prefix, cfg.batching.max_batch_size = "scale", "/scale", 1
    url = deploy(cfg)
    stop = threading.Event()

    def load():
        while not stop.is_set():
            complete(url, prompt="中国人民", max_tokens=48, temperature=0)

    def running() -> int:
        states = serve.status().applications["scale"].deployments["CompletionServer"].replica_states
        return states.get("RUNNING", 0)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.time() + 90
        while running() < 2:
            assert time.time() < deadline, "did not scale up to 2 replicas under load"
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    deadline = time.time() + 90
    while running() > 1:
        assert time.time() < deadline, "did not scale back down to 1 replica"
        time.sleep(0.5)
    serve.delete("scale")


def test_metrics_are_exported_through_ray(endpoint):
    import ray

    url, _ = endpoint
    complete(url, prompt="经济", max_tokens=4, temperature=0)
    requests.post(f"{url}/v1/completions", data=b"{bad", timeout=30)
    port = ray.nodes()[0]["MetricsExportPort"]
    wanted = [
        "minigpt_requests",
        "minigpt_request_errors",
        "minigpt_generated_tokens",
        "minigpt_time_to_first_token_s",
        "minigpt_batch_size",
    ]
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:  # the metrics agent exports on its own period
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    missing = [name for name in wanted if name not in text]
    assert not missing, missing


def test_a_tiny_temperature_is_greedy_and_hurts_no_batch_mate(endpoint):
    url, _ = endpoint
    greedy = [complete(url, prompt=p, max_tokens=12, temperature=0).json()["choices"][0]["text"] for p in PROMPTS[:4]]
    with ThreadPoolExecutor(4) as pool:  # 1e-40 once overflowed logits / T and failed every request in the batch
        replies = list(pool.map(lambda p: complete(url, prompt=p, max_tokens=12, temperature=1e-40), PROMPTS[:4]))
    assert [r.status_code for r in replies] == [200] * 4
    assert [r.json()["choices"][0]["text"] for r in replies] == greedy


def test_stream_usage_is_the_last_chunk_when_asked(endpoint):
    url, _ = endpoint
    events = stream(url, prompt="经济", max_tokens=8, temperature=0, stream_options={"include_usage": True})
    assert events[-1] == {"done": True} and events[-2]["choices"] == []
    usage = events[-2]["usage"]
    assert (
        usage["completion_tokens"]
        == complete(url, prompt="经济", max_tokens=8, temperature=0).json()["usage"]["completion_tokens"]
    )
    assert all("usage" not in e for e in events[:-2])


def test_an_api_key_guards_every_route_but_health(endpoint, tiny_zh_model):
    from ray import serve

    url, candidate = endpoint
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    cfg = serve_config(candidate, port)
    cfg.app_name, cfg.route_prefix, cfg.api_key = "keyed", "/keyed", "s3cret"
    keyed = deploy(cfg)
    try:
        assert requests.get(f"{keyed}/health", timeout=10).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for reply in (
                requests.get(f"{keyed}/v1/models", headers=headers, timeout=10),
                requests.post(f"{keyed}/v1/completions", json={"prompt": "经济"}, headers=headers, timeout=10),
            ):
                assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        good = {"Authorization": "Bearer s3cret"}
        assert requests.get(f"{keyed}/v1/models", headers=good, timeout=10).status_code == 200
        reply = requests.post(f"{keyed}/v1/completions", json={"prompt": "经济", "max_tokens": 2}, headers=good)
        assert reply.status_code == 200
    finally:
        serve.delete("keyed")


def test_a_full_queue_answers_503_with_retry_after_and_recovers(endpoint):
    from ray import serve

    url, candidate = endpoint
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    cfg = serve_config(candidate, port)
    cfg.app_name, cfg.route_prefix = "tight", "/tight"
    cfg.batching.max_batch_size, cfg.batching.max_queued_requests = 1, 1
    tight = deploy(cfg)
    try:
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(lambda p: complete(tight, prompt=p, max_tokens=40, ignore_eos=True), PROMPTS + PROMPTS[:2])
            )
        statuses = sorted(r.status_code for r in replies)
        assert set(statuses) == {200, 503} and statuses.count(200) >= 2  # one decoding, one queued, the rest refused
        for reply in replies:
            if reply.status_code == 503:
                assert reply.headers["Retry-After"] == "1" and reply.json()["error"]["code"] == "overloaded"
        assert complete(tight, prompt="经济", max_tokens=4).status_code == 200  # the queue drains
    finally:
        serve.delete("tight")
