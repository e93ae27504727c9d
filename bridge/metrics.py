"""Prometheus metrics on an injected registry (tests pass a fresh ``CollectorRegistry``).

Counters are bumped where things happen; the outbox gauges are read from the
outbox at scrape time by a collector, so ``/metrics`` tells the truth about the
queue even while nothing moves. Label values are target names only: never
URLs, never anything a client sent that is not a configured target.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .store import Stats

__all__ = ["ACCEPT_BUCKETS", "DELIVERY_BUCKETS", "Metrics", "OutboxCollector"]

ACCEPT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every metric the bridge exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.alerts_received = Counter(
            "oncall_alerts_received",
            "Alert POSTs by target and outcome (accepted, invalid, unauthorized, unknown_target, "
            "too_large, store_error, draining).",
            ["target", "outcome"],
            registry=registry,
        )
        self.deliveries = Counter(
            "oncall_deliveries",
            "Delivery outcomes by target: delivered, retry, dead, suppressed.",
            ["target", "outcome"],
            registry=registry,
        )
        self.auto_resolves = Counter(
            "oncall_auto_resolves",
            "Resolves the bridge enqueued itself (resolve_after / recoverable=false).",
            ["target"],
            registry=registry,
        )
        self.heartbeats = Counter(
            "oncall_heartbeats",
            "Heartbeat attempts by heartbeat name and outcome (sent, failed, skipped).",
            ["name", "outcome"],
            registry=registry,
        )
        self.keepalive_alerts = Counter(
            "oncall_keepalive_alerts",
            "Open alerts re-posted to Alertmanager by the keep-alive (per target, all members).",
            ["target"],
            registry=registry,
        )
        self.keepalive_errors = Counter(
            "oncall_keepalive_errors",
            "Keep-alive POSTs that failed (per target; the next round retries).",
            ["target"],
            registry=registry,
        )
        self.reconcile_actions = Counter(
            "oncall_reconcile_actions",
            "Resolves and triggers reconcile with Kapacitor enqueued (action = resolve, trigger).",
            ["target", "action"],
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "oncall_reconcile_errors",
            "Reconcile rounds that did nothing because Kapacitor could not be read.",
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "oncall_delivery_seconds",
            "Duration of one delivery attempt (render + HTTP/SMTP).",
            ["target"],
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.accept_seconds = Histogram(
            "oncall_accept_seconds",
            "Time from request to 202 (parse + durable commit).",
            buckets=ACCEPT_BUCKETS,
            registry=registry,
        )

    def watch_outbox(self, stats: Callable[[], Optional[Stats]], targets: Iterable[str]) -> None:
        """Export queue depth, dead letters and oldest age, read at scrape time."""
        self.registry.register(OutboxCollector(stats, tuple(targets)))


class OutboxCollector(Collector):
    """Reads :class:`~bridge.outbox.Stats` on every scrape."""

    def __init__(self, stats: Callable[[], Optional[Stats]], targets: Iterable[str]) -> None:
        self._stats = stats
        self._targets = tuple(targets)

    def describe(self) -> Iterator[Metric]:
        """Names only, so registering does not query the outbox."""
        yield GaugeMetricFamily("oncall_outbox_pending", "Rows waiting for delivery (incl. in flight).", labels=["target"])
        yield GaugeMetricFamily("oncall_outbox_dead", "Dead letters kept for replay.", labels=["target"])
        yield GaugeMetricFamily("oncall_outbox_oldest_age_seconds", "Age of the oldest undelivered row.")
        yield GaugeMetricFamily("oncall_store_writable", "1 when the last commit succeeded.")

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        pending = GaugeMetricFamily(
            "oncall_outbox_pending", "Rows waiting for delivery (incl. in flight).", labels=["target"]
        )
        dead = GaugeMetricFamily("oncall_outbox_dead", "Dead letters kept for replay.", labels=["target"])
        names = set(self._targets) | set(stats.pending) | set(stats.inflight) | set(stats.dead)
        for name in sorted(names):
            pending.add_metric([name], stats.pending.get(name, 0) + stats.inflight.get(name, 0))
            dead.add_metric([name], stats.dead.get(name, 0))
        yield pending
        yield dead
        yield GaugeMetricFamily(
            "oncall_outbox_oldest_age_seconds",
            "Age of the oldest undelivered row.",
            value=stats.oldest_pending_age or 0.0,
        )
        yield GaugeMetricFamily("oncall_store_writable", "1 when the last commit succeeded.", value=float(stats.writable))
