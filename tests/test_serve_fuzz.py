"""The running server driven by its own OpenAPI schema (schemathesis): valid and invalid requests generated for
every route, bounded in count and time, on loopback. No 5xx, and every 4xx in OpenAI's error shape."""

import time
from collections import Counter

import pytest

PER_ROUTE_AND_MODE = 200
"""Requests generated per route and mode (valid, invalid): 3 routes with a body x 2 modes x 200, and the two GETs."""
LIMIT_S = 900


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
                problems.append(f"{operation.label} {mode.value}: {response.status_code} {response.text[:300]} "
                                f"for {case.body!r:.300}")
            elif response.status_code >= 400:
                try:
                    error = response.json().get("error")
                except ValueError:  # not JSON at all
                    error = None
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
    for problem in problems[:20]:
        print("PROBLEM", problem)
    assert not problems, f"{len(problems)} problems, the first: {problems[0]}"
    assert total >= 1000, f"only {total} requests in {LIMIT_S} s"
