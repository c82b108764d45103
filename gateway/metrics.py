"""The gateway's Prometheus metrics: every process's (shared/metrics.py) plus the gateway's refusals."""
from __future__ import annotations

from prometheus_client import Counter

from shared import metrics


class Metrics(metrics.Metrics):
    def __init__(self, service: str = "gateway"):
        super().__init__(service)
        self.rate_limited = Counter("vmc_rate_limited_total", "Requests refused by a rate or concurrency limit", ["reason"],
                                    registry=self.registry)
