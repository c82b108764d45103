"""Prometheus metrics of one process (its own registry, so several apps can share a test process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class Metrics:
    def __init__(self, service: str):
        self.service = service
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vmc_http_requests_total", "HTTP requests by route and status", ["service", "method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "vmc_http_request_duration_seconds",
            "HTTP request latency",
            ["service", "method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.outbox_backlog = Gauge("vmc_outbox_backlog", "Outbox events not yet published", ["service"], registry=r)
        self.outbox_published = Counter("vmc_outbox_published_total", "Outbox events published", ["service"], registry=r)
        self.consumer_lag = Gauge(
            "vmc_consumer_lag", "Messages behind the partition high watermark", ["consumer", "topic", "partition"], registry=r
        )
        self.consumed = Counter("vmc_consumer_events_total", "Events handled", ["consumer", "outcome"], registry=r)
        self.dead_letters = Counter("vmc_dead_letters_total", "Messages sent to the dead-letter topic", ["consumer"], registry=r)
        self._request_series: dict[tuple[str, str, int], tuple] = {}
        self.rate_limited = Counter("vmc_rate_limited_total", "Requests refused by a rate or concurrency limit", ["reason"], registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency (the labelled series are looked up once each)."""
        key = (method, route, status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.requests.labels(self.service, method, route, str(status)),
                self.latency.labels(self.service, method, route),
            )
        series[0].inc()
        series[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
