"""A multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`: a head and worker nodes, each its own raylet
and object store), driven by the project's own training and serving code. Run by test_two_nodes.py in a process of
its own (the test session's embedded Ray cannot grow nodes):

  python tests/two_nodes_scenario.py WORK_DIR

1. Training: 2 workers x 1 CPU, placement SPREAD, on a head and a worker node of 1 CPU each. After the first
   checkpoint the worker node is killed (its raylet and workers die at once, as in a crash); a node of 2 CPUs joins
   5 s later, and Ray Train restarts the worker group from the checkpoint on the capacity that is there.
2. Serving: the trained model, one replica of 2 CPUs, which only the new node can hold; Serve's HTTP proxy runs on
   the head only, so every request goes through the head's ingress to the replica on the other node.
Prints one JSON line with what the test checks.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
import requests
from helpers import tiny_run_config
from ray import serve
from ray.cluster_utils import Cluster

from minigpt_ray.cluster import free_port
from minigpt_ray.config import ServeJobConfig
from minigpt_ray.serving.app import deploy
from minigpt_ray.training.trainer import run_training

NODE_ARGS = {"object_store_memory": 200 * 2**20, "include_dashboard": False}


def two_node_run_config(output: Path, address: str):
    cfg = tiny_run_config(output, max_steps=60, checkpoint_every=10, eval_every=30, placement_strategy="SPREAD")
    cfg.ray_address = address
    return cfg


def kill_after_first_checkpoint(cluster: Cluster, node, checkpoints: Path, training: threading.Thread) -> dict:
    """Crash `node` once a checkpoint exists, then add a 2-CPU node 5 s later (capacity returns). Ray's node
    handling needs the main thread, so training runs in `training`."""
    while not any(checkpoints.glob("*/checkpoint_*")):
        assert training.is_alive(), "training ended before its first checkpoint"
        time.sleep(0.2)
    time.sleep(2)  # Ray Train registers a reported checkpoint at its next poll of the workers
    cluster.remove_node(node, allow_graceful=False)
    time.sleep(5)
    return {"node3": cluster.add_node(num_cpus=2, **NODE_ARGS).node_id}


def serve_through_head(model_dir: Path, address: str) -> dict:
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeJobConfig(model=str(model_dir), port=port, ray_address=address)
    cfg.scaling.cpus_per_replica = 2
    url = deploy(cfg.validate())
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            health = requests.get(f"{url}/health", timeout=10)
            if health.status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    reply = requests.post(f"{url}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 4}, timeout=60)
    return {"health": health.json(), "completion_status": reply.status_code, "completion": reply.json()}


def main(work: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_server_port": free_port(), **NODE_ARGS})
    node2 = cluster.add_node(num_cpus=1, **NODE_ARGS)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    cfg = two_node_run_config(work / "run", cluster.address)
    result: dict = {}
    training = threading.Thread(target=lambda: result.update(run_training(cfg)), daemon=True)
    training.start()
    events = {"head": cluster.head_node.node_id, "node2": node2.node_id}
    events |= kill_after_first_checkpoint(cluster, node2, work / "run" / "checkpoints", training)
    training.join(timeout=400)
    assert result, "training did not finish"
    metrics = result
    served = serve_through_head(work / "run" / "model", cluster.address)
    print(json.dumps(events | {"metrics": metrics} | served))
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
