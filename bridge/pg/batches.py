"""Outcomes on PostgreSQL, and the delivery engine's batches: rows of a batch of claimed heads
in one read, and a batch of outcomes committed by a finisher thread in one set-based transaction
(:mod:`.finish`), so the dispatcher never waits on the database for an outcome."""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Sequence, Tuple

from ..batching import run_batches
from ..errors import StoreError
from ..store import Head, Outcome, OutcomeDone, Row, check_outcome
from . import sql
from .base import _PgBase, log
from .finish import finish_rows
from .writer import _STOP

class _Batches(_PgBase):
    def load_many(self, seqs: Sequence[int]) -> Dict[int, Row]:
        """Rows of claimed heads come with the claim; others are read in one query."""
        out: Dict[int, Row] = {}
        missing: List[int] = []
        with self._lock:
            for seq in seqs:
                item = self._busy.get(seq)
                if item is not None:
                    out[seq] = item.row
                else:
                    missing.append(seq)
        if missing:
            with self._tx() as cur:
                for r in cur.execute(f"SELECT {sql.ROW_COLUMNS} FROM oncall_outbox o WHERE o.seq = ANY(%s)",
                                     (missing,)).fetchall():
                    row = sql.to_row(r)
                    out[row.seq] = row
        return out

    def finish(self, head: Head, state: str, *, attempts: Optional[int] = None, next_at: Optional[float] = None,
               error: Optional[str] = None, status: Optional[int] = None) -> None:
        """Record a claimed row's outcome and wait for its commit: one outcome through the
        same set-based rules as :meth:`finish_many` (:func:`.finish.finish_rows`); a row whose
        lease another replica took is left alone."""
        outcome = Outcome(head, state, attempts, next_at, error, status)
        check_outcome(state, next_at)
        with self._tx(durable=True) as cur:
            results = finish_rows(cur, [outcome], self.replica_id, self._clock())
        self._finished(results)

    def finish_many(self, outcomes: Sequence[Outcome], done: OutcomeDone) -> None:
        """Record several outcomes; returns at once. A finisher thread commits everything
        queued meanwhile in one transaction and calls ``done(outcome, error)`` for each
        after the commit or its failure."""
        for o in outcomes:
            check_outcome(o.state, o.next_at)
        if not outcomes:
            return
        with self._lock:
            closed = self._closed
            if not closed:
                if self._finisher is None or not self._finisher.is_alive():
                    self._finisher = threading.Thread(target=self._run_finisher, name="pg-finisher", daemon=True)
                    self._finisher.start()
                self._finishing.put((list(outcomes), done))
        if closed:
            for o in outcomes:
                done(o, StoreError("store postgres: closed"))

    def _stop_finisher(self, timeout: float) -> None:
        """Commit the outcomes queued so far and end the finisher (the store is closing)."""
        with self._lock:
            finisher, self._finisher = self._finisher, None
        if finisher is not None:
            self._finishing.put(_STOP)
            finisher.join(timeout)

    def _run_finisher(self) -> None:
        run_batches(self._finishing, self._finish_batch, _STOP)

    def _finish_batch(self, batch: List[Tuple[List[Outcome], OutcomeDone]], retries: int = 2) -> None:
        # Keys locked in (target, key) order, like the writer's batches: no deadlock between them.
        ordered = sorted((o for outcomes, _done in batch for o in outcomes), key=lambda o: (o.head.target, o.head.key))
        now = self._clock()
        error: Optional[BaseException] = None
        results: List[Tuple[Outcome, bool]] = []
        try:
            # Durable, like SQLite's: a delivery is committed (and flushed) before its key's next
            # row can be claimed anywhere. An outcome lost in a database crash made the platform
            # see a key's last two events again in order (CRITICAL, OK, CRITICAL, OK), not just
            # the last one once more.
            with self._tx(durable=True) as cur:
                results = finish_rows(cur, ordered, self.replica_id, now)
        except StoreError as exc:
            if retries and "deadlock" in str(exc):
                self._finish_batch(batch, retries - 1)
                return
            error = exc
        except Exception as exc:  # noqa: BLE001 - a bug must answer the batch, not end the finisher silently
            log.error("pg.finish_failed", exc_info=True)
            error = exc
        if error is None:
            self._finished(results)
        for outcomes, done in batch:
            for o in outcomes:
                try:
                    done(o, error)
                except Exception:  # noqa: BLE001 - the finisher thread must outlive a bad callback
                    log.error("pg.callback_error", exc_info=True)

    def _finished(self, results: List[Tuple[Outcome, bool]]) -> None:
        """After the commit: the keys are free here; stale outcomes are logged."""
        with self._lock:
            for o, stale in results:
                self._busy.pop(o.head.seq, None)
                if o.state == "pending" and not stale:  # a failed head makes its key's queue a backlog
                    self._coalescible_cache.pop((o.head.target, False), None)
        for o, stale in results:
            if stale:
                log.warning("outbox.stale_finish", target=o.head.target, id=o.head.key, seq=o.head.seq,
                            state=o.state, hint="the lease ran out and another replica took the row")
        targets = {o.head.target for o, _stale in results}
        self._wake(targets, resolves=targets)  # a key's next head may be a resolve
