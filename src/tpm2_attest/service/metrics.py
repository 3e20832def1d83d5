"""Prometheus metrics of one service (``GET /metrics``).

* ``tpm2_attest_requests_total{route, method, status}``: every HTTP request, by route template;
* ``tpm2_attest_refusals_total{code}``: refusals by their error code;
* ``tpm2_attest_attestation_seconds{outcome}``: time to judge an answer to a challenge;
* ``tpm2_attest_devices{status}``: devices per status, read from the database at each scrape
  (so every process of a scaled-out service reports the same fleet);
* ``tpm2_attest_webhook_deliveries_total{result}``: status-change notifications ``delivered``
  or ``failed`` (no attempt succeeded); ``tpm2_attest_webhook_attempts_total{result}``: their
  HTTP attempts (``ok``, ``error``); ``tpm2_attest_webhook_dropped_total{reason}``: never
  delivered (``queue_full``, ``shutdown``); ``tpm2_attest_webhook_queue``: waiting now.

Each application has its own registry. With several processes (``serve --workers N``) the
counters and histograms of all of them are summed when ``PROMETHEUS_MULTIPROC_DIR`` names a
directory they share (``serve`` sets one up); see docs/service.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Devices(Collector):
    """Devices per status, counted by the database when scraped."""

    def __init__(self, db: store.Store, clock: Callable[[], datetime]) -> None:
        self.db, self.clock = db, clock

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("tpm2_attest_devices", "Enrolled devices by status", labels=["status"])
        try:
            with self.db.session() as s:
                counts = store.count_by_status(s, self.clock())
        except Exception:  # a scrape must not fail because the database does
            counts = {}
        for status, n in counts.items():
            family.add_metric([status], n)
        yield family


class Metrics:
    """The metrics of one application."""

    def __init__(self, db: store.Store, clock: Callable[[], datetime]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tpm2_attest_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.refusals = Counter("tpm2_attest_refusals", "Refused requests by error code", ["code"],
                                registry=self.registry)
        self.attestation = Histogram("tpm2_attest_attestation_seconds",
                                     "Seconds to verify, judge and record an answer to a challenge",
                                     ["outcome"], buckets=BUCKETS, registry=self.registry)
        self.webhook_deliveries = Counter("tpm2_attest_webhook_deliveries",
                                          "Status-change notifications delivered or failed (every attempt failed)",
                                          ["result"], registry=self.registry)
        self.webhook_attempts = Counter("tpm2_attest_webhook_attempts", "Webhook HTTP attempts by result",
                                        ["result"], registry=self.registry)
        self.webhook_dropped = Counter("tpm2_attest_webhook_dropped",
                                       "Status-change notifications dropped (queue full, shutdown)",
                                       ["reason"], registry=self.registry)
        self.webhook_queue = Gauge("tpm2_attest_webhook_queue", "Status-change notifications waiting for delivery",
                                   registry=self.registry, multiprocess_mode="livesum")
        self.devices = _Devices(db, clock)
        self.registry.register(self.devices)

    def render(self) -> bytes:
        """The exposition text: this process's metrics, or every process's in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self.devices)
            return generate_latest(registry)
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "Metrics"]
