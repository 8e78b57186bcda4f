"""The request metrics' counting: each observation counted under its own labels, errors only for a 5xx."""

from __future__ import annotations

import pytest

from cival.core.metrics import Metrics


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_observation_is_counted_under_its_labels_and_errors_only_for_5xx() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.observe("POST", "/api/v1/orders", 201, 0.002)
    metrics.observe("POST", "/api/v1/orders", 500, 0.3)
    metrics.observe("GET", "/api/v1/orders", 200, 0.004)

    assert _sample(metrics, "cival_http_requests_total", method="POST", route="/api/v1/orders", status="201") == 3
    assert _sample(metrics, "cival_http_requests_total", method="POST", route="/api/v1/orders", status="500") == 1
    assert _sample(metrics, "cival_http_requests_total", method="GET", route="/api/v1/orders", status="200") == 1
    # Latency per (method, route), whatever the status: four POSTs, their seconds summed.
    assert _sample(metrics, "cival_http_request_duration_seconds_count", method="POST", route="/api/v1/orders") == 4
    total = _sample(metrics, "cival_http_request_duration_seconds_sum", method="POST", route="/api/v1/orders")
    assert total == pytest.approx(0.306)
    assert _sample(metrics, "cival_http_errors_total", method="POST", route="/api/v1/orders") == 1
    assert _sample(metrics, "cival_http_errors_total", method="GET", route="/api/v1/orders") is None


def test_two_apps_count_apart() -> None:
    first, second = Metrics(), Metrics()
    first.observe("GET", "/x", 200, 0.001)
    assert _sample(first, "cival_http_requests_total", method="GET", route="/x", status="200") == 1
    assert _sample(second, "cival_http_requests_total", method="GET", route="/x", status="200") is None
