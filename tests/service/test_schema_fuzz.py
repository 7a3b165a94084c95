"""Property-based fuzzing of the OpenAPI schema (schemathesis): no input makes the service answer 5xx, and every
answer is valid against the schema.

The real app (bundle warm, store at a closed port -> degraded, the path most likely to break) is served
in-process; schemathesis runs its lifespan. Deterministic (derandomized, no example database) and bounded:
at least MIN_CASES generated cases over every route, most of them on the two recommendation routes. The
schemathesis pytest plugin's `from_fixture` does not work with pytest 9, so each operation's strategy is driven
by a plain hypothesis `@given`.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from service.app import create_app  # noqa: E402
from tests.service.conftest import dead_redis_url, make_settings  # noqa: E402

MIN_CASES = 1000
EXAMPLES = {"POST /v1/recommendations": 500, "POST /v1/recommendations:batch": 500}
OTHER_EXAMPLES = 50  # each of the remaining routes (models, health, readiness, admin reload)


def test_no_server_errors_for_any_schema_input(bundle_dir):
    app = create_app(make_settings(bundle=bundle_dir, redis_url=dead_redis_url(), redis_deadline_ms=50,
                                   redis_socket_timeout_s=0.05, redis_connect_timeout_s=0.05,
                                   readiness_timeout_s=0.05))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/recommendations", "/v1/recommendations:batch", "/readyz"}
    seen: dict[str, set[int]] = {}
    cases = 0

    for op in operations:
        label = f"{op.method.upper()} {op.path}"

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES.get(label, OTHER_EXAMPLES), derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            nonlocal cases
            cases += 1
            response = case.call()
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.path} {case.body!r}: {response.status_code} {response.text[:300]}")
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        check()
    print(f"schemathesis: {cases} cases, statuses {seen}")
    assert cases >= MIN_CASES, cases
    # the fuzzer reached the handlers (200 with a served ranking), not only the validation layer (422)
    for path in ("POST /v1/recommendations", "POST /v1/recommendations:batch"):
        assert {200, 422} <= seen[path], seen
