"""The request counter and latency histogram, as Prometheus reads them from /metrics."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.metrics import Metrics


def families(metrics: Metrics) -> dict:
    return {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}


def test_requests_are_counted_by_status_and_timed_by_route_in_cumulative_buckets():
    metrics = Metrics("gateway")
    for status, seconds in ((200, 0.0004), (200, 0.001), (404, 0.003), (200, 30.0)):  # 0.001 is in le="0.001"
        metrics.observe_request("GET", "/api/v1/organizations", status, seconds)
    metrics.observe_request("POST", "/api/v1/volunteers", 201, 0.02)
    found = families(metrics)
    counts = {(s.labels["method"], s.labels["status"]): s.value for s in found["vmc_http_requests"].samples
              if s.labels["service"] == "gateway" and s.name == "vmc_http_requests_total"}
    assert counts == {("GET", "200"): 3, ("GET", "404"): 1, ("POST", "201"): 1}
    samples = [s for s in found["vmc_http_request_duration_seconds"].samples if s.labels["route"] == "/api/v1/organizations"]
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 2 and buckets["0.0025"] == 2 and buckets["0.005"] == 3 and buckets["10.0"] == 3
    assert buckets["+Inf"] == 4
    assert {s.name: s.value for s in samples if not s.name.endswith("_bucket")} == {
        "vmc_http_request_duration_seconds_count": 4, "vmc_http_request_duration_seconds_sum": pytest.approx(30.0044)}


def test_a_new_process_exposes_both_families_before_any_request():
    found = families(Metrics("registry"))
    assert found["vmc_http_requests"].type == "counter" and found["vmc_http_requests"].samples == []
    assert found["vmc_http_request_duration_seconds"].type == "histogram"
