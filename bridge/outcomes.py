"""Recording outcomes: one store call per batch, nothing lost while the store fails.

Outcomes go to the store without waiting for their commit (the store keeps each key
busy until its outcome is durable, so nothing of the id can go out before it). A
failed commit is handed again with backoff, the key still busy; :meth:`Recorder.settle`
waits for them all when the bridge stops.

An outcome not yet durable is a send that a crash repeats, so their number is bounded
(:attr:`Recorder.backed_up`): while the store lags that far behind, the dispatcher sends
nothing new, and a ``kill -9`` re-sends at most the attempts in flight plus that many.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .attempt import Verdict
from .backend import Store
from .log import get_logger
from .metrics import Metrics
from .store import Outcome

__all__ = ["Recorder"]

log = get_logger("bridge.delivery")


class Recorder:
    """Hands verdicts' outcomes to the store, counts and logs them, retries failed commits."""

    def __init__(
        self,
        outbox: Store,
        metrics: Optional[Metrics],
        *,
        stopping: Callable[[], bool],
        kick: Callable[[], None],
        limit: int,
    ) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self._stopping = stopping
        self._kick = kick
        #: Outcomes not yet durable (handed or failed) at which :attr:`backed_up` holds.
        self.limit = max(1, limit)
        #: Outcomes handed to the store whose commit has not been confirmed yet, and the
        #: failed ones waiting to be handed again (due monotonic time, outcome, next delay).
        self._lock = threading.Lock()
        self._outstanding = 0
        self._settled = threading.Condition(self._lock)
        self._failed: List[Tuple[float, Outcome]] = []
        self._delays: Dict[int, float] = {}
        self._counters: Dict[Tuple[str, str], Any] = {}

    @property
    def failed(self) -> bool:
        """Whether some outcome failed to commit and waits to be handed again."""
        return bool(self._failed)

    @property
    def backed_up(self) -> bool:
        """Whether :attr:`limit` outcomes are not durable yet: send nothing new until one is."""
        return self._outstanding + len(self._failed) >= self.limit

    def record(self, verdicts: List[Verdict]) -> None:
        """Hand the outcomes to the store in one call, then count and log each verdict
        (a verdict without an event is recorded silently: a row given back)."""
        if not verdicts:
            return
        self._hand([v.outcome for v in verdicts])
        for v in verdicts:
            if not v.event:
                continue
            head = v.outcome.head
            if self.metrics is not None:
                self._counter(head.target, v.counted).inc()
            getattr(log, v.level)(v.event, target=head.target, id=head.key, alert_level=head.level, **v.fields)

    def _counter(self, target: str, outcome: str) -> Any:
        """``oncall_deliveries_total{target, outcome}``, its child looked up once."""
        child = self._counters.get((target, outcome))
        if child is None:
            assert self.metrics is not None
            child = self._counters[(target, outcome)] = self.metrics.deliveries.labels(target, outcome)
        return child

    def _hand(self, outcomes: List[Outcome]) -> None:
        with self._lock:
            self._outstanding += len(outcomes)
        try:
            self.outbox.finish_many(outcomes, self._durable)
        except BaseException:
            # Refused outright (a bug, not the store failing): nothing was handed.
            with self._settled:
                self._outstanding -= len(outcomes)
                self._settled.notify_all()
            raise

    def _durable(self, outcome: Outcome, error: Optional[BaseException]) -> None:
        """The store's answer for one outcome (any thread)."""
        if error is not None:
            self._unsettled(outcome, error)
            return
        with self._settled:
            was_backed_up = self.backed_up
            self._outstanding -= 1
            self._delays.pop(outcome.head.seq, None)
            self._settled.notify_all()
        if was_backed_up:
            self._kick()  # the dispatcher waits for this one to send again

    def _unsettled(self, outcome: Outcome, error: BaseException) -> None:
        head = outcome.head
        if self._stopping():
            # Left inflight: the next start puts it back to pending (at-least-once).
            log.error("delivery.unrecorded", target=head.target, id=head.key, state=outcome.state, error=str(error))
            with self._settled:
                self._outstanding -= 1
                self._delays.pop(head.seq, None)
                self._settled.notify_all()
            return
        log.error("store.error", target=head.target, id=head.key, error=str(error))
        with self._settled:
            self._outstanding -= 1
            delay = self._delays.get(head.seq, 0.2)
            self._delays[head.seq] = min(delay * 2, 5.0)
            self._failed.append((time.monotonic() + delay, outcome))
        self._kick()

    def resubmit(self, stopping: bool = False) -> Optional[float]:
        """Hand again the failed outcomes that are due (all of them when stopping); returns
        when the next one is due (monotonic), or None."""
        now = time.monotonic()
        with self._lock:
            due = [o for at, o in self._failed if stopping or at <= now]
            self._failed = [f for f in self._failed if not (stopping or f[0] <= now)]
            nxt = min((f[0] for f in self._failed), default=None)
        if due:
            try:
                self._hand(due)
            except Exception:  # noqa: BLE001 - the dispatcher must outlive it; the keys stay busy
                log.error("delivery.unrecorded", outcomes=len(due), exc_info=True)
        return nxt

    def settle(self, deadline: float) -> None:
        """Wait until every outcome handed to the store is durable (or given up while stopping)."""
        self.resubmit(stopping=True)
        with self._settled:
            while self._outstanding > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error("delivery.unsettled", outcomes=self._outstanding)
                    return
                self._settled.wait(min(left, 0.5))
