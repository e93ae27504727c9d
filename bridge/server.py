"""The HTTP face of the bridge (aiohttp) and the service that wires the parts together.

``POST /alerts/<target>`` answers 202 only after the outbox committed the event
(fsync'd), so Kapacitor's one and only attempt is never acknowledged for an
alert we could lose. The handler runs on the event loop; the commit happens in
the outbox's writer thread, and completions come back to the loop in one batch
per commit (one ``call_soon_threadsafe`` per group, not per request).

Checks run in the order that leaks least: draining → token → target →
size → body. An unauthenticated caller cannot probe which targets exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Deque, Dict, List, Optional, Tuple

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from .config import Config, bind_bridge_url, listen_error
from .delivery import Delivery
from .sender import Sender
from .errors import ConfigError, StoreError
from .event import EventError, parse
from .heartbeat import Heartbeat
from .keepalive import KeepAlive
from .log import get_logger
from .metrics import Metrics
from .backend import open_backend
from .outbox import Ticket
from .reconcile import Reconciler, routes_of
from .rejections import RejectionLog, json_error, json_errors
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


class _Completions:
    """Hands commit results from the writer thread to the event loop, one wake per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: List[Tuple["asyncio.Future[int]", Any, Optional[BaseException]]] = []
        self._scheduled = False

    def resolver(self, future: "asyncio.Future[int]") -> Any:
        def done(result: Any, error: Optional[BaseException]) -> None:
            with self._lock:
                self._items.append((future, result, error))
                if self._scheduled:
                    return
                self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # loop already closed at shutdown: nobody is waiting
                pass

        return done

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for future, result, error in items:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)


SERVICE = web.AppKey("service", Service)


class _CommitUnknown(Exception):
    """The insert was sealed into a transaction that did not finish within two commit timeouts."""


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return json_error(status, message, **extra)


class _Handlers:
    def __init__(self, service: Service) -> None:
        self.service = service
        cfg = service.config
        self.token = cfg.server.token.encode() if cfg.server.token else None
        self.max_body = cfg.server.max_body_bytes
        self.targets = cfg.targets
        self.fanout = cfg.fanout
        self.no_recovery = cfg.delivery.no_recovery_resolve_after
        self.commit_timeout = service.outbox.commit_timeout
        self.metrics = service.metrics
        self.rejections = RejectionLog()
        self._completions: Optional[_Completions] = None
        self._counters: Dict[Tuple[str, str], Any] = {}
        #: (deadline, future) in arrival order; swept by :meth:`sweep` (cheaper than a timer each).
        self._waiting: Deque[Tuple[float, "asyncio.Future[int]", Optional[Ticket]]] = deque()

    def _received(self, target: str, outcome: str) -> None:
        counter = self._counters.get((target, outcome))
        if counter is None:
            counter = self._counters[(target, outcome)] = self.metrics.alerts_received.labels(target, outcome)
        counter.inc()

    async def sweep(self) -> None:
        """Answer accepts whose commit takes longer than ``commit_timeout``.

        A queued insert is withdrawn first, so "NOT stored" is the truth: it will never
        be committed later (a client that retries creates no duplicate). If the writer
        has already sealed it into a transaction, the answer waits one more
        ``commit_timeout`` for the commit, and only then says the outcome is unknown.
        """
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            waiting = self._waiting
            late: List[Tuple[float, "asyncio.Future[int]", Optional[Ticket]]] = []
            while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
                _deadline, future, ticket = waiting.popleft()
                if future.done():
                    continue
                if ticket is None:
                    future.set_exception(_CommitUnknown())
                elif ticket.withdraw():
                    future.set_exception(StoreError("commit did not finish in time; the alert was withdrawn"))
                else:
                    late.append((now + self.commit_timeout, future, None))
            waiting.extend(late)

    async def post_alert(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        name = request.match_info["target"]
        known = name in self.targets
        label = name if known else ""
        if self.service.draining:
            self._received(label, "draining")
            return _error(503, "bridge is shutting down; retry against the restarted bridge")
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            scheme, _, credential = given.partition(" ")
            ok = hmac.compare_digest(credential.strip().encode(), self.token)
            if not ok or scheme.lower() != "bearer":
                self._received(label, "unauthorized")
                # Which part was wrong helps after a token rotation; the credential itself never shows.
                auth = "missing" if not given else "not a bearer token" if scheme.lower() != "bearer" else "wrong token"
                self.rejections.record(request, 401, "missing or wrong bearer token", name, auth=auth)
                return _error(
                    401,
                    "missing or wrong bearer token",
                    headers={"WWW-Authenticate": 'Bearer realm="kapacitor-oncall-bridge"'},
                )
        target = self.targets.get(name)
        if target is None:
            self._received("", "unknown_target")
            return self._reject(request, 404, f"unknown target {name[:64]!r}", name, known=sorted(self.targets))
        too_large = f"body larger than max_body_bytes ({self.max_body})"
        if request.content_length is not None and request.content_length > self.max_body:
            self._received(name, "too_large")
            return self._reject(request, 413, too_large, name)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._received(name, "too_large")
            return self._reject(request, 413, too_large, name)
        try:
            event = parse(body)
        except EventError as exc:
            self._received(name, "invalid")
            return self._reject(request, 400, str(exc), name, field=exc.field)
        except Exception:  # noqa: BLE001 - whatever a client sends is a 4xx, never a 5xx
            log.error("alert.parse_crashed", target=name, exc_info=True)
            self._received(name, "invalid")
            return self._reject(request, 400, "body: not a usable Kapacitor alert event", name, field="body")
        expire = target.auto_resolve_after(event, self.no_recovery)
        loop = asyncio.get_running_loop()
        if self._completions is None:
            self._completions = _Completions(loop)
        future: "asyncio.Future[int]" = loop.create_future()
        try:
            ticket = self.service.outbox.enqueue_with(
                self._completions.resolver(future), name, event.id, event.level, body, expire_after=expire
            )
            self._waiting.append((time.monotonic() + self.commit_timeout, future, ticket))
            seq = await future
            missing = await self._fan_out(name, event.id, event.level, body, expire)
        except _CommitUnknown:
            self._received(name, "store_unknown")
            log.error("alert.store_unknown", target=name, id=event.id, waited=2 * self.commit_timeout)
            return _error(
                504,
                "alert outcome UNKNOWN: the store was committing it when the deadline passed; it is "
                "probably stored and will be delivered; a retry may deliver it twice",
            )
        except StoreError as exc:
            self._received(name, "store_error")
            log.error("alert.store_failed", target=name, id=event.id, error=str(exc))
            return _error(503, "alert NOT stored: the store cannot commit (see bridge log); retry later")
        except Exception:  # noqa: BLE001 - a bug, not the client's fault; still never a 202
            self._received(name, "store_error")
            log.error("alert.store_crashed", target=name, id=event.id, exc_info=True)
            return _error(500, "alert NOT stored: internal error (see bridge log)")
        if missing:
            return self._partly_stored(name, event.id, seq, missing)
        self._received(name, "accepted")
        self.metrics.accept_seconds.observe(time.perf_counter() - started)
        log.info("alert.accepted", target=name, id=event.id, alert_level=event.level, seq=seq)
        payload = json.dumps({"status": "accepted", "target": name, "id": event.id, "seq": seq})
        return web.Response(body=payload.encode(), status=202, content_type="application/json")

    def _reject(self, request: web.Request, status: int, message: str, target: str, **extra: Any) -> web.Response:
        """Answer a refusal in JSON and log it (rate-limited): Kapacitor's log rarely shows why."""
        self.rejections.record(request, status, message, target)
        return _error(status, message, **extra)

    async def _fan_out(
        self, name: str, key: str, level: str, body: bytes, expire: Optional[float]
    ) -> Dict[str, BaseException]:
        """The other members of an HA target (``<name>@2``…) get their own durable row each,
        after the primary's row committed; returns the members whose row was not (or not
        knowably) committed. Every member is waited for, so the answer covers all of them."""
        members = self.fanout.get(name, ())[1:]
        if not members or self._completions is None:
            return {}
        loop = asyncio.get_running_loop()
        futures: List["asyncio.Future[int]"] = []
        for member in members:
            future: "asyncio.Future[int]" = loop.create_future()
            try:
                ticket = self.service.outbox.enqueue_with(
                    self._completions.resolver(future), member, key, level, body, expire_after=expire
                )
            except Exception as exc:  # noqa: BLE001 - a closed store: this member is not stored
                future.set_exception(exc)
                ticket = None
            if ticket is not None:
                self._waiting.append((time.monotonic() + self.commit_timeout, future, ticket))
            futures.append(future)
        results = await asyncio.gather(*futures, return_exceptions=True)
        return {m: r for m, r in zip(members, results) if isinstance(r, BaseException)}

    def _partly_stored(self, name: str, key: str, seq: int, missing: Dict[str, BaseException]) -> web.Response:
        """The primary's row is committed but some members' are not: never "NOT stored" (it is,
        for the primary) and never 202 (it is not, for the others). 504 says a retry may
        deliver it twice to the members that have it."""
        unknown = sorted(m for m, e in missing.items() if isinstance(e, _CommitUnknown))
        not_stored = sorted(m for m, e in missing.items() if not isinstance(e, _CommitUnknown))
        self._received(name, "store_partial")
        log.error("alert.store_partial", target=name, id=key, seq=seq, not_stored=not_stored, unknown=unknown,
                  errors=sorted({str(e) or type(e).__name__ for e in missing.values()}))
        stored = [name] + sorted(set(self.fanout.get(name, ())[1:]) - set(missing))
        parts = [f"stored for {', '.join(stored)} (seq {seq}, will be delivered there)"]
        if not_stored:
            parts.append(f"NOT stored for {', '.join(not_stored)} (the store cannot commit; see bridge log)")
        if unknown:
            parts.append(f"outcome UNKNOWN for {', '.join(unknown)} (the commit did not finish in time)")
        return _error(
            504,
            "alert PARTLY stored: " + "; ".join(parts) + ". A retry stores it for every member and may "
            "deliver it twice to those that have it",
            stored=stored, not_stored=not_stored, unknown=unknown, seq=seq,
        )

    async def healthz(self, request: web.Request) -> web.Response:
        health = await asyncio.get_running_loop().run_in_executor(None, self.service.health)
        return web.json_response(health.body, status=200 if health.ok else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        payload = generate_latest(self.service.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(service: Service) -> web.Application:
    """The aiohttp application; bodies above ``max_body_bytes`` are refused with 413."""
    handlers = _Handlers(service)
    app = web.Application(
        client_max_size=service.config.server.max_body_bytes, middlewares=[json_errors(handlers.rejections)]
    )
    app[SERVICE] = service
    app.router.add_post("/alerts/{target}", handlers.post_alert)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/metrics", handlers.metrics_text)
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
