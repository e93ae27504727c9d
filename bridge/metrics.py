"""Prometheus metrics on an injected registry (tests pass a fresh ``CollectorRegistry``).

Counters are bumped where things happen; the outbox gauges are read from the
outbox at scrape time by a collector, so ``/metrics`` tells the truth about the
queue even while nothing moves. Label values are target names only: never
URLs, never anything a client sent that is not a configured target.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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
            "too_large, store_error (NOT stored), store_unknown (commit outcome unknown), draining).",
            ["target", "outcome"],
            registry=registry,
        )
        self.deliveries = Counter(
            "oncall_deliveries",
            "Delivery outcomes by target: delivered, retry, dead, suppressed, superseded (coalesced: a newer "
            "event of the id carries the state), silenced.",
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


    def watch_cluster(self, cluster: Any) -> None:
        """Export the replica id, the singleton jobs it holds and the database's reachability."""
        self.registry.register(ClusterCollector(cluster))


class ClusterCollector(Collector):
    """Replica facts of a shared store (:class:`bridge.backend.Cluster`), read at scrape time."""

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        c = self._cluster
        info = GaugeMetricFamily("oncall_replica_info", "This replica's id (value 1).", labels=["replica"])
        info.add_metric([c.replica_id], 1.0)
        yield info
        held = GaugeMetricFamily("oncall_singleton_held", "1 while this replica holds the singleton job.", labels=["job"])
        for job, on in sorted(c.singletons().items()):
            held.add_metric([job], float(on))
        yield held
        yield GaugeMetricFamily("oncall_database_reachable", "1 when the last database call worked.",
                                value=float(c.reachable()))
        yield CounterMetricFamily("oncall_lease_resumed", "Rows this replica took over after another's lease ran out.",
                                  value=float(c.resumed))
        yield CounterMetricFamily("oncall_duplicate_posts", "Posts of an event already stored (dedup, 202 both).",
                                  value=float(c.duplicates))


class OutboxCollector(Collector):
    """Reads :class:`~bridge.outbox.Stats` on every scrape."""

    def __init__(self, stats: Callable[[], Optional[Stats]], targets: Iterable[str]) -> None:
        self._stats = stats
        self._targets = tuple(targets)

    def describe(self) -> Iterator[Metric]:
        """Names only, so registering does not query the outbox."""
        yield GaugeMetricFamily("oncall_outbox_pending", _PENDING, labels=["target"])
        yield GaugeMetricFamily("oncall_outbox_dead", _DEAD, labels=["target"])
        yield GaugeMetricFamily("oncall_outbox_oldest_age_seconds", _AGE)
        yield GaugeMetricFamily("oncall_outbox_orphaned", _ORPHANED)
        yield GaugeMetricFamily("oncall_incidents_open", _INCIDENTS, labels=["target"])
        yield CounterMetricFamily("oncall_store_op_failures", _FAILURES, labels=["op"])
        yield GaugeMetricFamily("oncall_store_writable", "1 when the last commit succeeded.")

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        configured = set(self._targets)
        pending = GaugeMetricFamily("oncall_outbox_pending", _PENDING, labels=["target"])
        dead = GaugeMetricFamily("oncall_outbox_dead", _DEAD, labels=["target"])
        names = configured | set(stats.pending) | set(stats.inflight) | set(stats.dead)
        orphaned = 0
        for name in sorted(names):
            rows = stats.pending.get(name, 0) + stats.inflight.get(name, 0)
            pending.add_metric([name], rows)
            dead.add_metric([name], stats.dead.get(name, 0))
            if name not in configured:
                orphaned += rows + stats.dead.get(name, 0)
        yield pending
        yield dead
        ages = [age for name, age in stats.oldest_by_target.items() if name in configured]
        yield GaugeMetricFamily("oncall_outbox_oldest_age_seconds", _AGE, value=max(ages, default=0.0))
        yield GaugeMetricFamily("oncall_outbox_orphaned", _ORPHANED, value=float(orphaned))
        incidents = GaugeMetricFamily("oncall_incidents_open", _INCIDENTS, labels=["target"])
        for name in sorted(configured):
            incidents.add_metric([name], stats.incidents_open.get(name, 0))
        yield incidents
        failures = CounterMetricFamily("oncall_store_op_failures", _FAILURES, labels=["op"])
        for op in _FAILING_OPS:
            failures.add_metric([op], stats.failed_ops.get(op, 0))
        yield failures
        yield GaugeMetricFamily("oncall_store_writable", "1 when the last commit succeeded.", value=float(stats.writable))


_PENDING = "Rows waiting for delivery (incl. in flight)."
_DEAD = "Dead letters kept for replay."
_AGE = "Age of the oldest undelivered row of a configured target."
_ORPHANED = (
    "Rows (queued or dead) of targets no longer configured: they are never delivered; "
    "`move --from OLD --to NEW` or `drop --target OLD`."
)
_INCIDENTS = "Incidents the platform believes are open (the incident ledger: last delivered level not OK)."
_FAILURES = "Store operations that failed with nobody waiting for them (logged as outbox.op_failed)."
#: Operations without a caller waiting: their failures would otherwise be silent.
_FAILING_OPS = ("SetInflight", "FireExpiries", "Expiry", "Prune", "Rebuild")
