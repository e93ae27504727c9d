"""Accepting alerts: ``POST /alerts/<target>`` answers 202 only after the outbox committed the
event (fsync'd), so Kapacitor's one and only attempt is never acknowledged for an alert we
could lose. The handler runs on the event loop; the commit happens in the outbox's writer
thread, and completions come back to the loop in one batch per commit (one
``call_soon_threadsafe`` per group, not per request).

Checks run in the order that leaks least: draining → token → target → size → body. An
unauthenticated caller cannot probe which targets exist. An HA target (``urls = [...]``)
stores one row per member in the same commit, so the answer is about all of them at once.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple

from aiohttp import web

from .errors import StoreError
from .event import EventError, parse
from .log import get_logger
from .outbox import Ticket
from .rejections import RejectionLog, json_error

if TYPE_CHECKING:
    from .server import Service

__all__ = ["Accept"]

log = get_logger("bridge.server")


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



class _CommitUnknown(Exception):
    """The insert was sealed into a transaction that did not finish within two commit timeouts."""



class Accept:
    """``POST /alerts/<target>``: checks, then one durable insert (all of an HA target's rows)."""
    def __init__(self, service: "Service") -> None:
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
            return json_error(503, "bridge is shutting down; retry against the restarted bridge")
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            scheme, _, credential = given.partition(" ")
            ok = hmac.compare_digest(credential.strip().encode(), self.token)
            if not ok or scheme.lower() != "bearer":
                self._received(label, "unauthorized")
                # Which part was wrong helps after a token rotation; the credential itself never shows.
                auth = "missing" if not given else "not a bearer token" if scheme.lower() != "bearer" else "wrong token"
                self.rejections.record(request, 401, "missing or wrong bearer token", name, auth=auth)
                return json_error(
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
        # An HA target's members (``<name>@2``...) get their own row each, in the same commit as
        # the primary's: one wait, and the answer (202, 503 or 504) holds for every row.
        members = self.fanout.get(name, ())[1:]
        try:
            ticket = self.service.outbox.enqueue_with(
                self._completions.resolver(future), name, event.id, event.level, body, expire_after=expire,
                also=members,
            )
            self._waiting.append((time.monotonic() + self.commit_timeout, future, ticket))
            seq = await future
        except _CommitUnknown:
            self._received(name, "store_unknown")
            log.error("alert.store_unknown", target=name, id=event.id, waited=2 * self.commit_timeout)
            return json_error(
                504,
                "alert outcome UNKNOWN: the store was committing it when the deadline passed; it is "
                "probably stored and will be delivered; a retry may deliver it twice",
            )
        except StoreError as exc:
            self._received(name, "store_error")
            log.error("alert.store_failed", target=name, id=event.id, error=str(exc))
            return json_error(503, "alert NOT stored: the store cannot commit (see bridge log); retry later")
        except Exception:  # noqa: BLE001 - a bug, not the client's fault; still never a 202
            self._received(name, "store_error")
            log.error("alert.store_crashed", target=name, id=event.id, exc_info=True)
            return json_error(500, "alert NOT stored: internal error (see bridge log)")
        self._received(name, "accepted")
        self.metrics.accept_seconds.observe(time.perf_counter() - started)
        log.info("alert.accepted", target=name, id=event.id, alert_level=event.level, seq=seq)
        payload = json.dumps({"status": "accepted", "target": name, "id": event.id, "seq": seq})
        return web.Response(body=payload.encode(), status=202, content_type="application/json")

    def _reject(self, request: web.Request, status: int, message: str, target: str, **extra: Any) -> web.Response:
        """Answer a refusal in JSON and log it (rate-limited): Kapacitor's log rarely shows why."""
        self.rejections.record(request, status, message, target)
        return json_error(status, message, **extra)
