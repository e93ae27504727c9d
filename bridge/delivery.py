"""Delivery: claim heads from the outbox, send them, record the outcome.

Two threads. The **dispatcher** does every store call: it decides *what* goes next,
loads and renders the claimed rows (one query per batch), and records outcomes (one
store call per batch). The **delivery loop** (:mod:`bridge.engine`) runs the attempts
themselves (libcurl transfers over pooled HTTP connections), ``workers`` at a time. Work
crosses between them in batches, never one delivery at a time.

The dispatcher only ever claims the head of a ``(target, key)`` queue, so per-id
order holds while different ids go in parallel. Before claiming it applies, in
this order:

1. repeat suppression: the same level as the last *delivered* event for that
   id, received within ``repeat_interval``, is marked ``suppressed`` (level
   changes always go);
2. the target's rate limiter: no token means the row stays pending (queued,
   never dropped) and the dispatcher sleeps until a token is back; a limited row
   goes to the loop at once and its token is spent as it leaves, not at the claim;
3. a per-target share of the ``workers`` attempt slots, so one dead platform
   cannot occupy every slot and starve the others.

Failures are classified by :mod:`bridge.transport`'s rules and judged by
:mod:`bridge.attempt`. Retryable ones wait per tenacity's ``wait_exponential_jitter``
(or the platform's ``Retry-After``); the attempt count and next due time are stored
in the row, so a restart resumes the schedule. Past ``max_age`` a row is
dead-lettered; permanent 4xx answers dead-letter it at once with the platform's
status and body. An outcome's key stays busy until the outcome is durable.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from . import supervise
from .attempt import Job, Verdict, dead, expired, judge
from .backend import Limiters, Store
from .coalesce import BACKLOG_AGE
from .config import Config, TargetConfig
from .engine import Engine, Finished
from .outcomes import Recorder
from .errors import StoreError
from .event import AlertEvent, EventError, parse
from .ledger import Incident
from .log import get_logger
from .metrics import Metrics
from .ratelimit import RateLimiters
from .retry import RetryPolicy
from .sender import Sender, send_once
from .store import Head, Outcome, Row
from .synthetic import SEND_TEST_ID, synthetic_event, synthetic_resolve
from .targets.base import Request

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


class Delivery:
    """The dispatcher thread, the delivery loop and the housekeeping tick."""

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
        #: One slow platform may use at most half the slots when there are others to serve.
        self._cap = workers if len(self.targets) <= 1 else max(1, workers // 2)
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self.engine = Engine(config.delivery, self.targets, self._finished, sender=self.sender,
                             stopping=self._stopping.is_set)
        self._dispatcher: Optional[threading.Thread] = None
        # Attempt slots: touched by the dispatcher thread only (and by stop() once it exited).
        self._free = workers
        self._inflight: Dict[str, int] = {name: 0 for name in self.targets}
        #: Attempts the loop finished, waiting for the dispatcher to record them.
        self._done: Deque[Finished] = deque()
        self._rotation = 0
        self._next_prune = 0.0
        self.coalesce_mode = config.delivery.coalesce
        self._coalesce_next: Dict[str, float] = {}
        #: ``delivery_seconds{target}`` children, looked up once per target.
        self._timers: Dict[str, Any] = {}
        # Twice as many outcomes may wait for their commit as attempts may be in flight, so a
        # crash re-sends fewer than three times ``workers`` rows however far the store lags.
        # (At ``workers`` a PostgreSQL drain paused 217 times per 10,000 deliveries and lost a
        # quarter of its rate; at twice that, 42 times.)
        self.recorder = Recorder(outbox, metrics, stopping=self._stopping.is_set, kick=self._kick.set,
                                 limit=2 * workers)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery loop and the dispatcher."""
        self.engine.start()
        self._dispatcher = supervise.start("dispatcher", self._dispatch, stopping=self._stopping.is_set)

    def stop(self, timeout: float = 30.0) -> bool:
        """Claim nothing new, let attempts in flight finish, wait until every outcome is
        durable; True if every attempt finished in time."""
        self._stopping.set()
        self._kick.set()
        deadline = time.monotonic() + timeout
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, deadline - time.monotonic()))
        clean = self.engine.drain(deadline)
        self._record_finished()
        self.recorder.settle(deadline)
        self.engine.close(max(0.1, min(5.0, deadline - time.monotonic())))
        self.sender.close()
        return clean

    def wake(self) -> None:
        """Something changed in the outbox: re-evaluate now."""
        self._kick.set()

    def alive(self) -> Tuple[int, int]:
        """(running threads, expected threads) for /healthz: the dispatcher and the delivery loop."""
        running = int(self._dispatcher is not None and self._dispatcher.is_alive()) + int(self.engine.alive())
        return running, 2

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
            self._record_finished()
            if self.recorder.failed:
                retry_at = self.recorder.resubmit()
                if retry_at is not None:
                    wake_at = min(wake_at, now + max(0.0, retry_at - time.monotonic()))
            self._rotation = (self._rotation + 1) % max(1, len(names))
            jobs: List[Job] = []
            try:
                for name in names[self._rotation :] + names[: self._rotation]:
                    try:
                        when = self._fill(name, now, jobs)
                    except StoreError:
                        when = now + 1.0
                    if when is not None:
                        wake_at = min(wake_at, when)
            finally:  # jobs already prepared hold claimed rows and slots: they go even if a fill crashed
                self.engine.submit(jobs)
            self._kick.wait(max(0.0, wake_at - self._clock()))
            self._kick.clear()

    def _fill(self, target: str, now: float, jobs: List[Job]) -> Optional[float]:
        """Claim ready heads of one target while slots are free, add their jobs to ``jobs``;
        return when to look again."""
        self._coalesce(target)
        limited = self.targets[target].rate_limit is not None
        claimed: List[Head] = []
        verdicts: List[Verdict] = []
        when: Optional[float] = None
        try:
            while not self._stopping.is_set():
                if self._free <= 0 or self._inflight[target] >= self._cap or self.recorder.backed_up:
                    break
                head, due = self.outbox.peek(target, now, resolves_first=limited)
                if head is None:
                    when = due
                    break
                if self._backlogged(head, now):
                    # This head may have history to coalesce: scan now, before it is claimed.
                    self._coalesce(target, force=True)
                    head, due = self.outbox.peek(target, now, resolves_first=limited)
                    if head is None:
                        when = due
                        break
                suppress = self._suppressed(head)
                if not suppress:
                    wait = self.limiters.wait_time(target)
                    if wait > 0:
                        when = self._clock() + wait
                        break
                if not self.outbox.claim(head):
                    continue
                if suppress:
                    verdicts.append(Verdict(Outcome(head, "suppressed"), "suppressed", "delivery.suppressed"))
                    continue
                self._free -= 1
                self._inflight[target] += 1
                if limited:
                    self._send_limited(head, verdicts)
                    continue
                claimed.append(head)
        finally:
            # A store error mid-round (a PostgreSQL claim or read) must not strand what this
            # round already claimed: those rows and their slots go out or come back as usual.
            if claimed:
                self._prepare(claimed, jobs, verdicts)
            self.recorder.record(verdicts)
        return when

    def _send_limited(self, head: Head, verdicts: List[Verdict]) -> None:
        """Send a rate-limited head at once and spend its token as it leaves: the platform counts
        arrivals, so the token's time is the send's, not the claim's (a row load and a render
        earlier, or a batch's worth). A row that is not sent (silenced, too old) spends none."""
        jobs: List[Job] = []
        self._prepare([head], jobs, verdicts)
        self.engine.submit(jobs)
        if jobs:
            self.limiters.try_acquire(head.target)

    def _prepare(self, heads: List[Head], jobs: List[Job], verdicts: List[Verdict]) -> None:
        """Load the claimed rows in one query and turn each into a job, or into an outcome
        without a send (silenced, max_age passed, unrenderable); those free their slot."""
        try:
            rows = self.outbox.load_many([h.seq for h in heads])
            told = self._told(heads)
        except Exception as exc:  # noqa: BLE001 - give the rows back, or their keys would stay busy
            log.error("store.error", op="load", rows=len(heads), error=str(exc))
            retry_at = self._clock() + 1.0
            for head in heads:
                self._release(head)
                verdicts.append(Verdict(Outcome(head, "pending", next_at=retry_at), "", ""))
            return
        for head in heads:
            try:
                job, verdict = self._job(head, rows.get(head.seq), told.get((head.target, head.key)))
            except Exception:  # noqa: BLE001 - one bad row must not stop the others
                log.error("delivery.crashed", target=head.target, id=head.key, exc_info=True)
                # Give the row back (same attempt count), or its key would stay blocked.
                job, verdict = None, Verdict(
                    Outcome(head, "pending", next_at=self._clock() + self.policy.maximum),
                    "", "")
            if job is not None:
                jobs.append(job)
            else:
                self._release(head)
                if verdict is not None:
                    verdicts.append(verdict)

    def _told(self, heads: List[Head]) -> Dict[Tuple[str, str], Incident]:
        """What each platform was told of these ids, for targets that render with it
        (``render_told``, seam 3): one ledger read per target of the batch."""
        out: Dict[Tuple[str, str], Incident] = {}
        for name in {h.target for h in heads}:
            if getattr(self.targets[name].target, "render_told", None) is not None:
                found = self.outbox.told_many(name, [h.key for h in heads if h.target == name])
                out.update(((name, key), incident) for key, incident in found.items())
        return out

    def _job(self, head: Head, row: Optional[Row], told: Optional[Incident]) -> Tuple[Optional[Job], Optional[Verdict]]:
        if row is None:
            return None, dead(head, 0, "row vanished from the store", None, "")
        if self.hold is not None:
            silence = self.hold(row.target, row.key, row.level, row.body)
            if silence is not None:
                # Kept on file as 'silenced'; bridge.silences releases the id's latest state later.
                return None, Verdict(Outcome(head, "silenced"), "silenced", "delivery.silenced",
                                     fields=dict(silence=silence))
        cfg = self.config.delivery
        now = self._clock()
        gone = expired(head, row, now, cfg.max_age)
        if gone is not None:
            return None, gone
        target = self.targets[head.target]
        try:
            request = self._render(target, parse(row.body), told)
        except EventError as exc:
            return None, dead(head, row.attempts, f"stored event is invalid: {exc}", None, "")
        except Exception as exc:  # noqa: BLE001 - a formatter bug must dead-letter, not loop
            log.error("delivery.render_failed", target=head.target, id=head.key, exc_info=True)
            return None, dead(head, row.attempts, f"render failed: {type(exc).__name__}: {exc}", None, "")
        job = Job(head, request, row.attempts + 1, row.queued_at + cfg.max_age)
        return job, None

    def _release(self, head: Head) -> None:
        self._free += 1
        self._inflight[head.target] -= 1

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

    @staticmethod
    def _render(target: TargetConfig, event: AlertEvent, told: Optional[Incident]) -> Request:
        """``render_told`` (seam 3) when the target has it: the request depends on what the
        platform was told (Alertmanager resolves exactly the severities that fired)."""
        render_told = getattr(target.target, "render_told", None)
        if render_told is None:
            return target.target.render(event)  # type: ignore[no-any-return]
        return render_told(event, told)  # type: ignore[no-any-return]

    # -- outcomes ----------------------------------------------------------------

    def _finished(self, batch: List[Finished]) -> None:
        """Called by the delivery loop with every attempt it finished in one pass."""
        self._done.extend(batch)
        self._kick.set()

    def _record_finished(self) -> None:
        """Judge the attempts the loop finished, free their slots, record the outcomes."""
        if not self._done:
            return
        now = self._clock()
        verdicts: List[Verdict] = []
        while self._done:
            job, result, seconds = self._done.popleft()
            self._release(job.head)
            if self.metrics is not None:
                timer = self._timers.get(job.head.target)
                if timer is None:
                    timer = self._timers[job.head.target] = self.metrics.delivery_seconds.labels(job.head.target)
                timer.observe(seconds)
            verdicts.append(judge(job, result, now, self.policy))
        self.recorder.record(verdicts)
