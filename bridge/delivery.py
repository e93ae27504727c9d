"""Delivery: claim heads from the outbox, send them, record the outcome.

One dispatcher thread decides *what* goes next; a pool of worker threads does
the slow part (render + HTTP/SMTP). The dispatcher only ever claims the head of
a ``(target, key)`` queue, so per-id order holds while different ids go in
parallel. Before claiming it applies, in this order:

1. repeat suppression: the same level as the last *delivered* event for that
   id, received within ``repeat_interval``, is marked ``suppressed`` (level
   changes always go);
2. the target's rate limiter: no token means the row stays pending (queued,
   never dropped) and the dispatcher sleeps until a token is back;
3. a per-target share of the pool, so one dead platform cannot occupy every
   worker and starve the others.

Failures are classified by :mod:`bridge.transport`. Retryable ones wait per
tenacity's ``wait_exponential_jitter`` (or the platform's ``Retry-After``); the
attempt count and next due time are stored in the row, so a restart resumes
the schedule. Past ``max_age`` a row is dead-lettered; permanent 4xx answers
dead-letter it at once with the platform's status and body.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import supervise
from .config import Config, TargetConfig
from .coalesce import BACKLOG_AGE
from .errors import DeliveryError, PermanentError, RetryableError, StoreError
from .event import AlertEvent, EventError, parse
from .log import get_logger
from .metrics import Metrics
from .backend import Limiters, Store
from .store import Head
from .ratelimit import RateLimiters
from .targets.base import Request
from .transport import MAX_BODY_CHARS
from .retry import RetryPolicy
from .sender import Sender, send_once
from .synthetic import SEND_TEST_ID, synthetic_event, synthetic_resolve

__all__ = [
    "Delivery",
    "RetryPolicy",
    "SEND_TEST_ID",
    "Sender",
    "send_once",
    "synthetic_event",
    "synthetic_resolve",
]

log = get_logger("bridge.delivery")

#: How often the dispatcher runs housekeeping (expiries, replays by other processes).
TICK_SECONDS = 0.5
PRUNE_EVERY = 10.0
#: Crashes of the dispatch loop in quick succession after which the process exits (bridge.supervise).
DISPATCHER_CRASHES = 5
#: Seconds between full scans for coalescible keys of a target (and at least 20× a scan's own
#: cost): a ready head that itself shows a backlog triggers a scan at once (see ``_fill``).
COALESCE_SCAN_EVERY = 0.25


@dataclass(frozen=True)
class _Job:
    kind: str  # "send" or "suppress"
    head: Head


@dataclass
class _Outcome:
    """An outcome handed to the store and not yet durable; retried while the store fails."""

    head: Head
    state: str
    fields: Dict[str, Any]
    delay: float = 0.2


class Delivery:
    """The dispatcher thread, the worker pool and the housekeeping tick."""

    def __init__(
        self,
        config: Config,
        outbox: Store,
        *,
        metrics: Optional[Metrics] = None,
        sender: Optional[Sender] = None,
        clock: Callable[[], float] = time.time,
        limiters: Optional[Limiters] = None,
    ) -> None:
        self.config = config
        self.targets: Mapping[str, TargetConfig] = config.targets
        self.outbox = outbox
        self.metrics = metrics
        self.sender = sender or Sender(config.delivery)
        #: The silences hook: ``hold(target, key, level, body)`` names a silence holding the
        #: row, or None. Set by the service (see :mod:`bridge.silences`).
        self.hold: Optional[Callable[[str, str, str, bytes], Optional[str]]] = None
        self.policy = RetryPolicy(config.delivery.backoff_initial, config.delivery.backoff_max)
        self.limiters: Limiters = limiters or RateLimiters({n: t.rate_limit for n, t in self.targets.items()})
        self._clock = clock
        workers = config.delivery.workers
        self._workers_n = workers
        #: One slow platform may use at most half the pool when there are others to serve.
        self._cap = workers if len(self.targets) <= 1 else max(1, workers // 2)
        self._jobs: "SimpleQueue[Optional[_Job]]" = SimpleQueue()
        self._kick = threading.Event()
        self._lock = threading.Lock()
        self._free = workers
        self._inflight: Dict[str, int] = {name: 0 for name in self.targets}
        self._stopping = threading.Event()
        self._threads: List[threading.Thread] = []
        self._dispatcher: Optional[threading.Thread] = None
        self._rotation = 0
        self._next_prune = 0.0
        self.coalesce_mode = config.delivery.coalesce
        self._coalesce_next: Dict[str, float] = {}
        #: Outcomes handed to the store whose commit has not been confirmed yet, and the
        #: failed ones waiting to be handed again (due monotonic time, outcome).
        self._outstanding = 0
        self._settled = threading.Condition(self._lock)
        self._unrecorded: List[Tuple[float, _Outcome]] = []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and the dispatcher."""
        stopping = self._stopping.is_set
        for i in range(self._workers_n):
            self._threads.append(supervise.start(f"delivery-{i}", self._work, stopping=stopping))
        self._dispatcher = supervise.start("dispatcher", self._dispatch, stopping=stopping)

    def stop(self, timeout: float = 30.0) -> bool:
        """Claim nothing new, let attempts in flight finish; True if all workers exited."""
        self._stopping.set()
        self._kick.set()
        deadline = time.monotonic() + timeout
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, deadline - time.monotonic()))
        for _ in self._threads:
            self._jobs.put(None)
        clean = True
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            clean = clean and not thread.is_alive()
        self._settle(deadline)
        self.sender.close()
        return clean

    def _settle(self, deadline: float) -> None:
        """Wait until every outcome handed to the store is durable (or given up while stopping)."""
        self._resubmit(stopping=True)
        with self._settled:
            while self._outstanding > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error("delivery.unsettled", outcomes=self._outstanding)
                    return
                self._settled.wait(min(left, 0.5))

    def wake(self) -> None:
        """Something changed in the outbox: re-evaluate now."""
        self._kick.set()

    def alive(self) -> Tuple[int, int]:
        """(running threads, expected threads) for /healthz: workers plus the dispatcher."""
        running = sum(t.is_alive() for t in self._threads)
        running += int(self._dispatcher is not None and self._dispatcher.is_alive())
        return running, self._workers_n + 1

    # -- dispatcher --------------------------------------------------------------

    def _dispatch(self) -> None:
        crashes = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._dispatch_loop()
            except Exception:  # noqa: BLE001 - a dead dispatcher would silently stop every delivery
                # A crash after a minute of work is a new fault; crashes in quick succession are one.
                crashes = crashes + 1 if time.monotonic() - started < 60.0 else 1
                log.error("dispatcher.crashed", crashes=crashes, exc_info=True)
                if crashes >= DISPATCHER_CRASHES:
                    # Not a passing fault: let the process die loudly (bridge.supervise) and restart.
                    raise
                self._stopping.wait(1.0)
            else:
                crashes = 0

    def _dispatch_loop(self) -> None:
        next_tick = 0.0
        names = sorted(self.targets)
        while not self._stopping.is_set():
            now = self._clock()
            if now >= next_tick:
                self._housekeeping(now)
                next_tick = now + TICK_SECONDS
            wake_at = next_tick
            if self._unrecorded:
                retry_at = self._resubmit()
                if retry_at is not None:
                    wake_at = min(wake_at, now + max(0.0, retry_at - time.monotonic()))
            self._rotation = (self._rotation + 1) % max(1, len(names))
            for name in names[self._rotation :] + names[: self._rotation]:
                try:
                    when = self._fill(name, now)
                except StoreError:
                    when = now + 1.0
                if when is not None:
                    wake_at = min(wake_at, when)
            self._kick.wait(max(0.0, wake_at - self._clock()))
            self._kick.clear()

    def _fill(self, target: str, now: float) -> Optional[float]:
        """Claim ready heads of one target while workers are free; return when to look again."""
        self._coalesce(target)
        limited = self.targets[target].rate_limit is not None
        while not self._stopping.is_set():
            with self._lock:
                if self._free <= 0 or self._inflight[target] >= self._cap:
                    return None
            head, due = self.outbox.peek(target, now, resolves_first=limited)
            if head is None:
                return due
            if self._backlogged(head, now):
                # This head may have history to coalesce: scan now, before it is claimed.
                self._coalesce(target, force=True)
                head, due = self.outbox.peek(target, now, resolves_first=limited)
                if head is None:
                    return due
            kind = "suppress" if self._suppressed(head) else "send"
            if kind == "send":
                wait = self.limiters.wait_time(target)
                if wait > 0:
                    return self._clock() + wait
            if not self.outbox.claim(head):
                continue
            if kind == "send":
                self.limiters.try_acquire(target)
            with self._lock:
                self._free -= 1
                self._inflight[target] += 1
            self._jobs.put(_Job(kind, head))
        return None

    def _backlogged(self, head: Head, now: float) -> bool:
        """Whether ``head`` shows a backlog the way :meth:`Store.coalescible` judges one
        (failed before, old, or its target held back by the rate limiter)."""
        if self.coalesce_mode == "off":
            return False
        if head.due > head.received_at or now - head.received_at >= BACKLOG_AGE:
            return True
        return self.targets[head.target].rate_limit is not None and self.limiters.wait_time(head.target) > 0

    def _coalesce(self, target: str, force: bool = False) -> None:
        """Turn a backlog of history into state before claiming (see :mod:`bridge.coalesce`).

        The scan walks every key of the target with several pending rows, so unless a
        head asks for it (``force``) it runs at most every :data:`COALESCE_SCAN_EVERY`
        seconds and never takes more than ~5 % of the dispatcher's time."""
        if self.coalesce_mode == "off":
            return
        started = time.monotonic()
        if not force and started < self._coalesce_next.get(target, 0.0):
            return
        try:
            self._coalesce_scan(target)
        finally:
            spent = time.monotonic() - started
            self._coalesce_next[target] = time.monotonic() + max(COALESCE_SCAN_EVERY, 20 * spent)

    def _coalesce_scan(self, target: str) -> None:
        limited = self.targets[target].rate_limit is not None and self.limiters.wait_time(target) > 0
        if not self.outbox.coalescible(target, limited=limited):
            return
        try:
            gone = self.outbox.coalesce(target, self.coalesce_mode, limited=limited)
        except (StoreError, TimeoutError) as exc:
            # Not coalescing only costs extra deliveries: deliver history this round.
            log.error("store.error", target=target, op="coalesce", error=str(exc))
            return
        if gone:
            log.info("delivery.coalesced", target=target, superseded=gone, mode=self.coalesce_mode)
            if self.metrics is not None:
                self.metrics.deliveries.labels(target, "superseded").inc(gone)

    def _suppressed(self, head: Head) -> bool:
        interval = self.config.delivery.repeat_interval
        if interval <= 0:
            return False
        last = self.outbox.forwarded(head.target, head.key)
        if last is None or last.level != head.level:
            return False
        return 0 <= head.received_at - last.received_at < interval

    def _housekeeping(self, now: float) -> None:
        try:
            self.outbox.check_external()
            self.outbox.fire_expiries(self._make_resolve)
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_EVERY
                forget = now - self.config.delivery.repeat_interval - 60.0
                self.outbox.prune(self.config.store.keep_delivered, forget_before=forget)
        except StoreError as exc:
            log.error("store.error", error=str(exc))

    def _make_resolve(self, target: str, key: str, body: bytes, now: float) -> Optional[bytes]:
        """Called by the outbox writer for each due auto-resolve timer."""
        if target not in self.targets:
            return None
        resolved = synthetic_resolve(target, key, body, now)
        log.info("alert.auto_resolved", target=target, id=key)
        if self.metrics is not None:
            self.metrics.auto_resolves.labels(target).inc()
        return resolved

    # -- workers -----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job.kind == "suppress":
                    self._record(job.head, "suppressed")
                    self._count(job.head.target, "suppressed")
                    log.info("delivery.suppressed", target=job.head.target, id=job.head.key, alert_level=job.head.level)
                else:
                    self._attempt(job.head)
            except Exception:  # noqa: BLE001 - a worker must survive anything
                log.error("delivery.crashed", target=job.head.target, id=job.head.key, exc_info=True)
                # Give the row back (same attempt count), or its key would stay blocked.
                self._record(job.head, "pending", next_at=self._clock() + self.policy.maximum)
            finally:
                with self._lock:
                    self._free += 1
                    self._inflight[job.head.target] -= 1
                self._kick.set()

    def _count(self, target: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.deliveries.labels(target, outcome).inc()

    def _record(self, head: Head, state: str, **fields: Any) -> None:
        """Hand an outcome to the store without waiting for its commit.

        The store keeps the key busy until the outcome is durable, so nothing of the
        id can go out before it; the worker is free for the next delivery meanwhile
        (commits are grouped by the store). A failed commit is handed again by the
        dispatcher with backoff, the key still busy; :meth:`stop` waits for them all."""
        with self._lock:
            self._outstanding += 1
        self._hand(_Outcome(head, state, fields))

    def _hand(self, outcome: _Outcome) -> None:
        def done(_result: Any, error: Optional[BaseException]) -> None:
            if error is not None:
                self._unsettled(outcome, error)
                return
            with self._settled:
                self._outstanding -= 1
                self._settled.notify_all()

        try:
            self.outbox.finish(outcome.head, outcome.state, done=done, **outcome.fields)
        except (StoreError, TimeoutError) as exc:
            self._unsettled(outcome, exc)
        except BaseException:
            # Refused outright (a bug, not the store failing): the caller handles it as before.
            with self._settled:
                self._outstanding -= 1
                self._settled.notify_all()
            raise

    def _unsettled(self, outcome: _Outcome, error: BaseException) -> None:
        head = outcome.head
        if self._stopping.is_set():
            # Left inflight: the next start puts it back to pending (at-least-once).
            log.error("delivery.unrecorded", target=head.target, id=head.key, state=outcome.state, error=str(error))
            with self._settled:
                self._outstanding -= 1
                self._settled.notify_all()
            return
        log.error("store.error", target=head.target, id=head.key, error=str(error))
        with self._lock:
            self._unrecorded.append((time.monotonic() + outcome.delay, outcome))
        outcome.delay = min(outcome.delay * 2, 5.0)
        self._kick.set()

    def _resubmit(self, stopping: bool = False) -> Optional[float]:
        """Hand again the failed outcomes that are due (all of them when stopping); returns
        when the next one is due (monotonic), or None."""
        now = time.monotonic()
        with self._lock:
            due = [o for at, o in self._unrecorded if stopping or at <= now]
            self._unrecorded = [(at, o) for at, o in self._unrecorded if not (stopping or at <= now)]
            nxt = min((at for at, _o in self._unrecorded), default=None)
        for outcome in due:
            try:
                self._hand(outcome)
            except Exception:  # noqa: BLE001 - the dispatcher must outlive it; the key stays busy
                log.error("delivery.unrecorded", target=outcome.head.target, id=outcome.head.key,
                          state=outcome.state, exc_info=True)
        return nxt

    def _attempt(self, head: Head) -> None:
        target = self.targets[head.target]
        row = self.outbox.load(head.seq)
        if row is None:
            self._record(head, "dead", error="row vanished from the store")
            return
        if self.hold is not None:
            silence = self.hold(row.target, row.key, row.level, row.body)
            if silence is not None:
                # Kept on file as 'silenced'; bridge.silences releases the id's latest state later.
                self._record(head, "silenced")
                self._count(head.target, "silenced")
                log.info("delivery.silenced", target=head.target, id=head.key, silence=silence)
                return
        cfg = self.config.delivery
        now = self._clock()
        attempt = row.attempts + 1
        deadline = row.queued_at + cfg.max_age
        if now > deadline and row.next_attempt_at < deadline:
            # Not the final attempt scheduled at the deadline: the bridge was down or saturated
            # for longer than max_age. Keep what we know about the earlier failures.
            why = f"max_age exceeded before attempt {attempt}"
            self._dead(head, row.attempts, f"{why}; last error: {row.last_error}" if row.last_error else why,
                       row.last_status, "")
            return
        try:
            event = parse(row.body)
            request = self._render(head, target, event)
        except EventError as exc:
            self._dead(head, row.attempts, f"stored event is invalid: {exc}", None, "")
            return
        except Exception as exc:  # noqa: BLE001 - a formatter bug must dead-letter, not loop
            log.error("delivery.render_failed", target=head.target, id=head.key, exc_info=True)
            self._dead(head, row.attempts, f"render failed: {type(exc).__name__}: {exc}", None, "")
            return
        started = time.monotonic()
        try:
            response = self.sender.send(target, request)
        except PermanentError as exc:
            self._observe(head.target, started)
            self._dead(head, attempt, str(exc), exc.status, exc.body)
        except RetryableError as exc:
            self._observe(head.target, started)
            self._retry(head, attempt, deadline, exc)
        except DeliveryError as exc:
            self._observe(head.target, started)
            self._retry(head, attempt, deadline, RetryableError(str(exc), exc.status, exc.body))
        except Exception as exc:  # noqa: BLE001 - unknown failure: keep the alert, try again
            self._observe(head.target, started)
            log.error("delivery.send_failed", target=head.target, id=head.key, exc_info=True)
            self._retry(head, attempt, deadline, RetryableError(f"{type(exc).__name__}: {exc}"))
        else:
            self._observe(head.target, started)
            self._record(head, "delivered", attempts=attempt, status=response.status)
            self._count(head.target, "delivered")
            log.info(
                "delivery.ok",
                target=head.target,
                id=head.key,
                alert_level=head.level,
                attempt=attempt,
                status=response.status,
                seconds=round(response.elapsed, 4),
            )

    def _render(self, head: Head, target: TargetConfig, event: AlertEvent) -> Request:
        """``render_told`` (seam 3) when the target has it: the request depends on what the
        platform was told (Alertmanager resolves exactly the severities that fired)."""
        render_told = getattr(target.target, "render_told", None)
        if render_told is None:
            return target.target.render(event)  # type: ignore[no-any-return]
        return render_told(event, self.outbox.told(head.target, head.key))  # type: ignore[no-any-return]

    def _observe(self, target: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.delivery_seconds.labels(target).observe(time.monotonic() - started)

    def _retry(self, head: Head, attempt: int, deadline: float, exc: RetryableError) -> None:
        now = self._clock()
        delay = self.policy.delay(attempt, exc.retry_after)
        if now >= deadline:
            self._dead(head, attempt, f"max_age exceeded after {attempt} attempts: {exc}", exc.status, exc.body)
            return
        next_at = min(now + delay, deadline)
        error = str(exc) if not exc.body else f"{exc}: {exc.body[:MAX_BODY_CHARS]}"
        self._record(head, "pending", attempts=attempt, next_at=next_at, error=error, status=exc.status)
        self._count(head.target, "retry")
        log.warning(
            "delivery.retry",
            target=head.target,
            id=head.key,
            alert_level=head.level,
            attempt=attempt,
            status=exc.status,
            error=str(exc),
            next_in=round(next_at - now, 3),
            retry_after=exc.retry_after,
        )

    def _dead(self, head: Head, attempts: int, error: str, status: Optional[int], body: str) -> None:
        full = f"{error}: {body[:MAX_BODY_CHARS]}" if body else error
        self._record(head, "dead", attempts=attempts, error=full, status=status)
        self._count(head.target, "dead")
        log.error(
            "delivery.dead",
            target=head.target,
            id=head.key,
            alert_level=head.level,
            attempts=attempts,
            status=status,
            error=error,
            body=body[:500],
            # A lost resolve is the orphaned-incident case: make it impossible to miss.
            resolve=head.level == "OK",
        )
