"""Soak: thousands of mixed requests against two replicas while one replica is killed mid-run.

  .venv/bin/python bench/serve_soak.py [--model runs/pipeline/sweep/winner] [--requests 2000] [--concurrency 32]

Mix per request index: 60% plain completions, 20% streams read to the end, 10% streams abandoned after their first
event, 10% bad inputs (malformed JSON, an unimplemented parameter) that must get a 4xx. One replica actor is killed
with `ray.kill` once a third of the requests are done; Serve starts a replacement. Reports requests served, outcomes
by kind (only requests in flight on the killed replica may fail), p50/p99 latency of plain completions, each
replica's RSS (VmRSS from /proc) before the run and at the end, and the time until two replicas run again.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt_ray.cluster import connect_ray, free_port  # noqa: E402
from minigpt_ray.config.serve import ServeJobConfig  # noqa: E402
from minigpt_ray.serving.app import deploy  # noqa: E402

PROMPTS = ["今天天气", "这本书", "我们很喜欢这个酒店", "服务", "价格", "质量不错"]


def replicas() -> list:
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], detail=True)
    return [a for a in alive if a.class_name.startswith("ServeReplica:soak")]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_request(url: str, i: int) -> tuple[str, float]:
    """(outcome, seconds) of request i."""
    kind, prompt, started = i % 10, PROMPTS[i % len(PROMPTS)], time.perf_counter()
    try:
        if kind == 9:  # bad input: must be refused, never break anything
            body = b'{"prompt": "x"' if i % 20 == 9 else b'{"prompt": "x", "presence_penalty": 1}'
            reply = requests.post(f"{url}/v1/completions", data=body, timeout=60)
            return ("bad input refused" if 400 <= reply.status_code < 500 else f"bad input {reply.status_code}"), 0.0
        if kind >= 6:  # streams: read to the end, or abandon after the first event
            with requests.post(
                f"{url}/v1/completions",
                json={"prompt": prompt, "max_tokens": 24, "stream": True},
                stream=True,
                timeout=60,
            ) as reply:
                if reply.status_code != 200:
                    return f"stream {reply.status_code}", 0.0
                lines = reply.iter_lines()
                if kind == 8:
                    next(lines)
                    return "stream abandoned", 0.0
                done = any(line == b"data: [DONE]" for line in lines)
                return ("stream ok" if done else "stream cut"), 0.0
        reply = requests.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 16}, timeout=60)
        return ("ok" if reply.status_code == 200 else f"plain {reply.status_code}"), time.perf_counter() - started
    except requests.RequestException as err:
        return f"connection error ({type(err).__name__})", 0.0


def report(args, results, wall, kill_at, killed, recovered, before, after) -> None:
    latencies = sorted(seconds for outcome, seconds, _ in results if outcome == "ok")
    outcomes = collections.Counter(outcome for outcome, _, _ in results)
    expected = {"ok", "stream ok", "stream abandoned", "bad input refused"}
    failed = [sent for outcome, _, sent in results if outcome not in expected]
    # a request sent after the kill was noticed (the replacement exists) should not fail
    late = [sent for sent in failed if sent > killed["at"] + (recovered or 120)]
    print(f"{args.requests} requests, concurrency {args.concurrency}, 2 replicas, one killed after {kill_at}: "
          f"{wall:.1f} s, {args.requests / wall:.1f} requests/s\n")  # fmt: skip
    print("| outcome | requests |\n|---|---|")
    for outcome, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"| {outcome} | {count} |")
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"\nplain completions: p50 {1000 * statistics.median(latencies):.0f} ms, p99 {1000 * p99:.0f} ms")
    survivor = [k for k in before if k != killed["actor_id"]]
    for actor in survivor:
        growth = after.get(actor, float("nan")) / before[actor]
        print(f"surviving replica RSS: {before[actor]:.0f} MB before, {after.get(actor, float('nan')):.0f} MB after "
              f"({growth:.2f}x)")  # fmt: skip
    print(f"back to 2 replicas {recovered:.1f} s after the kill" if recovered else "not back to 2 replicas in 120 s")
    print(f"failed: {len(failed)}, all sent before the kill or within {recovered or 120:.1f} s after it, except "
          f"{len(late)}; sent before the kill: {sum(sent < killed['at'] for sent in failed)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/pipeline/sweep/winner")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    import ray

    connect_ray("")
    cfg = ServeJobConfig(model=args.model, port=free_port(), app_name="soak")
    cfg.scaling.min_replicas = cfg.scaling.max_replicas = 2
    cfg.scaling.cpus_per_replica = 0.5
    url = deploy(cfg.validate())
    for i in range(20):  # warm both replicas
        one_request(url, i * 10)
    before = {a.actor_id: rss_mb(a.pid) for a in replicas()}
    done, kill_at, killed = collections.Counter(), args.requests // 3, {}
    lock = threading.Lock()

    def run(i: int) -> tuple[str, float, float]:
        sent = time.perf_counter()
        outcome, seconds = one_request(url, i)
        with lock:
            done["n"] += 1
            if done["n"] == kill_at:
                victim = replicas()[0]
                killed.update(actor_id=victim.actor_id, at=time.perf_counter())
                ray.kill(ray.get_actor(victim.name, namespace="serve"))
        return outcome, seconds, sent

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(run, range(args.requests)))
    wall = time.perf_counter() - started
    recovered = None
    while recovered is None and time.perf_counter() - killed["at"] < 120:
        if len(replicas()) == 2:
            recovered = time.perf_counter() - killed["at"]
        else:
            time.sleep(0.5)
    after = {a.actor_id: rss_mb(a.pid) for a in replicas()}
    report(args, results, wall, kill_at, killed, recovered, before, after)
    from ray import serve

    serve.shutdown()


if __name__ == "__main__":
    main()
