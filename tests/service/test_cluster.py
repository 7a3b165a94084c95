"""Redis Cluster through the same fetch interface: a real one-node cluster (redis-server, all 16384 slots)."""

from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import pytest
import redis

from scoter.reasoning_store import encode, reasoning_key
from scoter.testing import free_port
from service.reasoning_fetch import CircuitBreaker, ReasoningFetcher, ReasoningSpec, make_client


@pytest.fixture
def cluster_port(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server binary not available")
    port = free_port(max_port=55535)  # a cluster node also binds port + 10000 and refuses ports above 55535
    proc = subprocess.Popen([server, "--port", str(port), "--cluster-enabled", "yes", "--cluster-config-file",
                             str(tmp_path / "nodes.conf"), "--dir", str(tmp_path), "--save", "", "--appendonly",
                             "no", "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_timeout=5)
        for _ in range(400):  # up to ~20 s on a loaded machine
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None:  # it will never answer: say so now, not after every retry
                    raise RuntimeError(f"cluster redis-server on port {port} exited with {proc.returncode}") from None
                time.sleep(0.05)
        client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        for _ in range(400):
            if client.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0:
                break
            time.sleep(0.05)
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_cluster_mget_across_slots(cluster_port):
    spec = ReasoningSpec("rv-cluster", 2, 4)
    users = [f"cluster-user-{i}" for i in range(6)]  # keys spread over many hash slots
    seed = redis.RedisCluster(host="127.0.0.1", port=cluster_port, socket_timeout=5)
    mat = np.arange(8, dtype=np.float32).reshape(2, 4)
    for u in users[:3]:
        seed.set(reasoning_key(spec.version, u), encode(mat, dtype="float32"))
    seed.close()
    client = make_client(f"redis://127.0.0.1:{cluster_port}/0", cluster=True, connect_timeout=2.0,
                         socket_timeout=2.0, max_connections=8)
    fetcher = ReasoningFetcher(client, max_age_s=3600, deadline_ms=2000, breaker=CircuitBreaker(3, 5))
    try:
        out = await fetcher.fetch(users, [False] * len(users), spec)
    finally:
        await fetcher.close()
    assert [o.status for o in out] == ["hit"] * 3 + ["miss"] * 3
    np.testing.assert_array_equal(out[0].reasoning.array(), mat)
