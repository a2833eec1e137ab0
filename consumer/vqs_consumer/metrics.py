"""The runtime's Prometheus metrics, in a registry of their own (one per runner)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Unit seconds: from under a second to a few hours of GPU work.
UNIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.units = Counter(
            "vqs_consumer_units", "Units finished, by outcome: done, retried, dead_lettered, cancelled, handed_back",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.unit_seconds = Histogram(
            "vqs_consumer_unit_seconds", "Seconds the handler spent on a unit", buckets=UNIT_BUCKETS, registry=self.registry
        )
        self.busy = Gauge("vqs_consumer_busy", "1 while this worker holds a unit", registry=self.registry)
        self.releases = Counter(
            "vqs_consumer_releases", "Session releases, by result: ok, failed", ["result"], registry=self.registry
        )
        self.queue_errors = Counter(
            "vqs_consumer_queue_errors", "Failed queue calls, by operation", ["operation"], registry=self.registry
        )
        self.leases_lost = Counter(
            "vqs_consumer_leases_lost", "Units another worker took over while this one still worked on them",
            registry=self.registry,
        )  # fmt: skip
