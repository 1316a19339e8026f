"""The running server driven by its own OpenAPI schema (schemathesis): valid and invalid requests generated for
every route, bounded in count and time, on loopback. No 5xx, and every 4xx in OpenAI's error shape."""

import time
from collections import Counter

import pytest

PER_ROUTE_AND_MODE = 120
"""Requests generated per route and mode (valid, invalid): 5 routes x 2 modes x 120 = 1,200 at the most."""
LIMIT_S = 1200


@pytest.mark.slow
def test_requests_generated_from_the_schema_get_no_5xx_and_every_4xx_in_openais_shape(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    url, _ = server
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    counts: Counter = Counter()
    problems: list[str] = []
    deadline = time.monotonic() + LIMIT_S
    def fuzz(operation, mode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=PER_ROUTE_AND_MODE, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def send(case):
            if time.monotonic() > deadline:
                return
            response = case.call(base_url=url, timeout=120)
            counts[operation.label, mode.value, response.status_code] += 1
            if response.status_code >= 500:
                problems.append(f"{operation.label} {mode.value}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400:
                error = response.json().get("error") if "json" in response.headers.get("content-type", "") else None
                if not (isinstance(error, dict) and {"message", "type", "param"} <= error.keys()):
                    problems.append(f"{operation.label} {mode.value}: {response.status_code} not in OpenAI's shape: "
                                    f"{response.text[:200]}")

        try:
            send()
        except Unsatisfiable:  # a route without parameters or body (GET /healthz) has no invalid request to make
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label

    for result in schema.get_all_operations():
        for mode in schemathesis.GenerationMode:
            fuzz(result.ok(), mode)
    total = sum(counts.values())
    by_route = Counter()
    for (label, _, status), n in counts.items():
        by_route[label, status // 100 * 100] += n
    print(f"\n{total} generated requests:", dict(sorted(by_route.items())))
    assert not problems, problems[:10]
    assert total >= 1000, f"only {total} requests in {LIMIT_S} s"
