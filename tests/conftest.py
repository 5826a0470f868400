"""Shared fixtures. Core tests need no cluster; orchestration tests share one local Ray per session.

Every test that starts Ray is marked `cluster` here, from the fixtures it uses, so `pytest -m "not cluster"` is the
fast tier: `ray_cluster` (the session's embedded Ray), `head_node` (a `ray start` cluster) and `spawns_ray` (the
test runs a job or a notebook that starts its own embedded Ray). A fast-tier test that calls `ray.init` anyway fails
with a message saying to use one of them."""

from __future__ import annotations

import os

import pytest
from helpers import train_tiny_model

RAY_FIXTURES = {"ray_cluster", "head_node", "spawns_ray"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(autouse=True)
def _no_ray_outside_the_cluster_tier(request, monkeypatch):
    """A test not marked `cluster` must not start Ray (it would make the fast tier slow and flaky)."""
    if request.node.get_closest_marker("cluster") is None:
        import ray

        def refuse(*args, **kwargs):
            raise AssertionError("this test starts Ray: request the ray_cluster or spawns_ray fixture")

        monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def spawns_ray():
    """Marks a test that starts Ray in a subprocess of its own (a job, a notebook kernel): cluster tier."""


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the whole session: 2 CPUs for two training workers, no dashboard (port 8265 stays
    free for a user's own cluster and for the `ray start` test, which uses its own ports)."""
    import ray

    # Serve's autoscaling metrics are pushed every 10 s by default; 1 s keeps the autoscaling test short.
    for name in (
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
    ):
        os.environ.setdefault(name, "1")
    from minigpt_ray.cluster import embedded_serve_env

    embedded_serve_env()  # the same Serve ingress (HAProxy) as the jobs' embedded Ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    from minigpt_ray.data.corpora import source_documents

    return "\n\n".join(d.text for d in source_documents("shakespeare", max_chars=60_000))


@pytest.fixture(scope="session")
def zh_text() -> str:
    from minigpt_ray.data.corpora import source_documents

    return "\n".join(d.text for d in source_documents("zh-news", max_chars=40_000))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One fresh tokenizer/corpus cache per test session (shared by its jobs, subprocesses and workers), so no test
# reads what an earlier session or a user's own runs left in ~/.cache.
if "MINIGPT_RAY_CACHE" not in os.environ:
    import tempfile

    os.environ["MINIGPT_RAY_CACHE"] = tempfile.mkdtemp(prefix="minigpt-test-cache-")


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, shakespeare_text):
    """train_tiny_model on a Shakespeare slice (English)."""
    return train_tiny_model(shakespeare_text.split("\n\n"), tmp_path_factory.mktemp("tiny_trained") / "model")


@pytest.fixture(scope="session")
def tiny_zh_model(tmp_path_factory, zh_text):
    """train_tiny_model on People's Daily with a 300-token vocabulary: most Chinese characters span 2-3 byte
    tokens, so streaming must hold incomplete characters back."""
    return train_tiny_model(zh_text.split("\n"), tmp_path_factory.mktemp("tiny_zh") / "model", vocab_size=300)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session's browser tests (a missing browser fails them, never skips them)."""
    from browser import start_chromium

    try:
        driver = start_chromium()
    except RuntimeError as err:
        pytest.fail(str(err))
    yield driver
    driver.quit()
