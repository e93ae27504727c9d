"""The HTTP face of the bridge (aiohttp) and the service that wires the parts together.

``POST /alerts/<target>`` is :mod:`bridge.accept` (202 only after a durable commit);
here are ``/healthz``, ``/metrics``, the status page's routes and the process's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, Optional

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from .accept import Accept
from .config import Config, bind_bridge_url, listen_error
from .delivery import Delivery
from .sender import Sender
from .errors import ConfigError
from . import heap
from .heartbeat import Heartbeat
from .keepalive import KeepAlive
from .log import get_logger
from .metrics import Metrics
from .backend import open_backend
from .reconcile import Reconciler, routes_of
from .rejections import json_errors
from .silences import Silencer
from .store import Stats
from .ui import setup_ui

__all__ = ["Health", "Service", "check_listen", "make_app", "serve"]

log = get_logger("bridge.server")

#: /healthz caches the store write probe this long, so a scrape storm cannot fsync-storm the disk.
PROBE_CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class Health:
    """What /healthz answers: ``ok`` decides 200 or 503."""

    ok: bool
    body: Dict[str, Any]


class Service:
    """Config + outbox + delivery + metrics + heartbeats: the running bridge minus HTTP."""

    def __init__(self, config: Config, *, registry: Optional[CollectorRegistry] = None) -> None:
        config = bind_bridge_url(config)
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        backend = open_backend(config, on_change=self._on_change)
        self.outbox = backend.store
        #: Set when replicas share the store (PostgreSQL): replica id, singletons, reachability.
        self.cluster = backend.cluster
        self.delivery = Delivery(config, self.outbox, metrics=self.metrics, limiters=backend.limiters)
        #: Silences live in the store (both backends); the hook holds matching deliveries.
        silenced = Gauge("oncall_silences_active", "Silences in force (read from the store).",
                         registry=self.registry)
        self.silencer = Silencer(self.outbox, on_read=silenced.set)
        self.outbox.watch_silences(self.silencer.poke)
        self.delivery.hold = self.silencer.holds
        self.heartbeats = [Heartbeat(h, self._beat_allowed, metrics=self.metrics) for h in config.heartbeats]
        self.keepalive = KeepAlive(config.targets, self.outbox, Sender(config.delivery), metrics=self.metrics,
                                   allowed=lambda: self._singleton("keepalive"))
        self.reconciler: Optional[Reconciler] = None
        if config.kapacitor.url is not None:
            self.reconciler = Reconciler(
                config.kapacitor,
                self.outbox,
                routes=routes_of(config.kapacitor, config.fanout),
                targets=config.targets,
                metrics=self.metrics,
                on_enqueue=self._on_change,
                allowed=lambda: self._singleton("reconcile"),
            )
        self.draining = False
        self._probe_at = 0.0
        self._probe_ok = True
        self._probe_lock = threading.Lock()
        self.metrics.watch_outbox(self._stats, config.targets)
        if self.cluster is not None:
            self.metrics.watch_cluster(self.cluster)

    def _singleton(self, job: str) -> bool:
        """Alone, or the replica holding ``job``'s lease: work that must happen once."""
        return self.cluster is None or self.cluster.holds(job)

    def _beat_allowed(self) -> bool:
        """Healthy, and with replicas only the one holding the ``heartbeat`` job beats."""
        return (self.cluster is None or self.cluster.holds("heartbeat")) and self.healthy()

    def _on_change(self) -> None:
        self.delivery.wake()

    def _stats(self) -> Optional[Stats]:
        return self.outbox.stats() if self.outbox.writer_alive else None

    def start(self) -> None:
        """Open the store (recovering a crash), start delivery and heartbeats."""
        self.outbox.open()
        self.silencer.start()
        self.delivery.start()
        for heartbeat in self.heartbeats:
            heartbeat.start()
        self.keepalive.start()
        if self.reconciler is not None:
            self.reconciler.start()
        orphans = self.outbox.targets_with_rows() - set(self.config.targets)
        if orphans:
            log.warning("outbox.orphaned", targets=sorted(orphans), hint="rows for targets no longer configured")

    def stop(self, timeout: float) -> bool:
        """Stop heartbeats and delivery (letting attempts finish), then close the store."""
        self.draining = True
        for heartbeat in self.heartbeats:
            heartbeat.stop()
        if self.reconciler is not None:
            self.reconciler.stop()
        self.keepalive.stop()
        self.silencer.stop()
        clean = self.delivery.stop(timeout)
        left = self.outbox.stats().total_pending
        self.outbox.close()
        log.info("bridge.stopped", clean=clean, left_pending=left)
        return clean

    def probe(self) -> bool:
        """Whether the store can commit now (cached briefly)."""
        with self._probe_lock:
            now = time.monotonic()
            if now - self._probe_at >= PROBE_CACHE_SECONDS:
                self._probe_ok = self.outbox.probe(timeout=3.0)
                self._probe_at = time.monotonic()
            return self._probe_ok

    def healthy(self) -> bool:
        return self.health().ok

    def health(self) -> Health:
        """Store writable, writer and workers alive, queue depth and age (blocking: run off-loop)."""
        probed = self.outbox.writer_alive and self.probe()
        running, expected = self.delivery.alive()
        stats = self.outbox.stats()
        # A failed real commit counts even while an older successful probe is cached.
        writable = probed and stats.writable
        ok = writable and running == expected and not self.draining
        targets = {
            name: {
                "pending": stats.pending.get(name, 0),
                "inflight": stats.inflight.get(name, 0),
                "dead": stats.dead.get(name, 0),
            }
            for name in sorted(set(self.config.targets) | set(stats.pending) | set(stats.dead))
        }
        body = {
            "status": "draining" if self.draining else ("ok" if ok else "unhealthy"),
            "store": self._store_health(writable, stats),
            "workers": {"alive": running, "expected": expected},
            "queue": {
                "pending": sum(stats.pending.values()),
                "inflight": sum(stats.inflight.values()),
                "dead": sum(stats.dead.values()),
                "oldest_pending_age_seconds": None
                if stats.oldest_pending_age is None
                else round(stats.oldest_pending_age, 3),
            },
            "targets": targets,
        }
        return Health(ok, body)

    def _store_health(self, writable: bool, stats: Stats) -> Dict[str, Any]:
        if self.cluster is None:
            return {"path": self.config.store.path, "writable": writable, "error": stats.last_error}
        # The DSN is a secret: say what the store is, never where or with which credentials.
        return {
            "backend": "postgres",
            "replica": self.cluster.replica_id,
            "database_reachable": self.cluster.reachable(),
            "singletons": self.cluster.singletons(),
            "writable": writable,
            "error": stats.last_error,
        }


SERVICE = web.AppKey("service", Service)


def make_app(service: Service) -> web.Application:
    """The aiohttp application; bodies above ``max_body_bytes`` are refused with 413."""
    handlers = Accept(service)
    app = web.Application(
        client_max_size=service.config.server.max_body_bytes, middlewares=[json_errors(handlers.rejections)]
    )
    app[SERVICE] = service

    async def healthz(request: web.Request) -> web.Response:
        health = await asyncio.get_running_loop().run_in_executor(None, service.health)
        return web.json_response(health.body, status=200 if health.ok else 503)

    async def metrics_text(request: web.Request) -> web.Response:
        payload = generate_latest(service.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_post("/alerts/{target}", handlers.post_alert)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_text)
    setup_ui(app, service)

    async def sweeper(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(handlers.sweep())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sweeper)
    return app


def check_listen(config: Config, insecure: bool) -> None:
    """Refuse an open listener without a token: alerts are a way to page people at night."""
    problem = None if insecure else listen_error(config.server)
    if problem is not None:
        raise problem


async def serve(config: Config, *, insecure: bool = False, registry: Optional[CollectorRegistry] = None) -> int:
    """Run until SIGTERM/SIGINT, then drain: 503 for new alerts, finish attempts, exit 0."""
    check_listen(config, insecure)
    if not config.server.is_loopback and not config.server.token:
        log.warning("server.insecure", listen=config.server.listen, hint="no token on a non-loopback address")
    loop = asyncio.get_running_loop()
    # Installed first, so a SIGTERM during startup still means a clean drain, not a kill.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = Service(config, registry=registry)
    await loop.run_in_executor(None, service.start)
    app = make_app(service)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, backlog=1024, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await loop.run_in_executor(None, service.stop, 5.0)
        raise ConfigError("server.listen", f"cannot listen on {config.server.listen}: {exc.strerror}") from None
    heap.settle()  # start-up's objects live as long as the process: out of the collector's walks
    stats = service.outbox.stats()
    log.info(
        "bridge.started",
        listen=config.server.listen,
        targets=sorted(config.targets),
        store=config.store.path if service.cluster is None else "postgres",
        replica=None if service.cluster is None else service.cluster.replica_id,
        pending=stats.total_pending,
        dead=sum(stats.dead.values()),
        recovered_inflight=service.outbox.recovered_inflight,
    )
    if not config.targets:
        log.warning("config.no_targets", hint="every POST /alerts/<target> will answer 404")
    await stop.wait()
    log.info("bridge.stopping")
    service.draining = True
    timeout = max(t.timeout or config.delivery.timeout for t in config.targets.values()) if config.targets else 0
    await loop.run_in_executor(None, service.stop, timeout + 5.0)
    await runner.cleanup()
    return 0
