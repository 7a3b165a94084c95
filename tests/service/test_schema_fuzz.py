"""Property-based fuzzing of the OpenAPI schema (schemathesis): no input makes the service answer 5xx.

The real app (bundle warm, store at a closed port -> degraded, the path most likely to break) is served
in-process; schemathesis runs its lifespan. Deterministic (derandomized, no example database) and bounded.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from service.app import create_app  # noqa: E402
from tests.service.conftest import dead_redis_url, make_settings  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(bundle_dir):
    app = create_app(make_settings(bundle=bundle_dir, redis_url=dead_redis_url(), redis_deadline_ms=50,
                                   redis_socket_timeout_s=0.05, redis_connect_timeout_s=0.05))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
