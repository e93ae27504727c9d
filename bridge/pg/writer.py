"""Accepting on PostgreSQL: writer threads group-commit queued inserts (one transaction, one
WAL flush for every POST waiting), so ``done(seq)`` and the 202 come only after a durable
commit; the same event posted to two replicas is stored once. Each id has its lane (see
:data:`~.base.WRITER_LANES`), so one id's posts commit in the order they came."""

from __future__ import annotations

import contextlib
import queue
from concurrent.futures import Future
from typing import Any, List, Optional, Sequence, Tuple

import psycopg

from ..batching import run_batches
from ..errors import StoreError
from ..outbox_ops import Ticket, resolver
from . import arrays, sql
from .base import Done, _Lane, _PgBase, log
from .rows import _Insert, _store_error

MAX_BATCH = 1000
_STOP = object()


#: One per column of :meth:`_Insert.params` (target, key, level, body, now, expire_at, synthetic, dedup).
_COLUMN_DUMPERS = (arrays.texts, arrays.texts, arrays.texts, arrays.byteas, arrays.floats, arrays.floats,
                   arrays.bools, arrays.byteas)


class _Writer(_PgBase):
    # -- accepting ---------------------------------------------------------------------

    def enqueue_with(
        self,
        done: Done,
        target: str,
        key: str,
        level: str,
        body: bytes,
        *,
        expire_after: Optional[float] = None,
        received_at: Optional[float] = None,
        synthetic: bool = False,
        also: Sequence[str] = (),
    ) -> Ticket:
        """Queue an insert; ``done(seq, None)`` once committed, ``done(None, StoreError)`` if not.
        ``also``: more targets getting the same event in the same statement (all or none;
        ``seq`` is the first target's). The ticket's ``withdraw()`` returning True guarantees
        no row is ever committed."""
        now = self._clock() if received_at is None else received_at
        expire_at = None if expire_after is None else now + expire_after
        op = _Insert(target, key, level, body, now, expire_at, synthetic, done, also)
        lane = self._lanes[hash(key) % len(self._lanes)]
        with self._lock:  # close() sets _closed under it, then queues the writers' stop: nothing lands after that
            closed = self._closed
            if not closed:
                lane.queue.put(op)
        if closed:
            op.withdraw()
            done(None, StoreError("store postgres: closed"))
        return op

    def enqueue(self, target: str, key: str, level: str, body: bytes, *, expire_after: Optional[float] = None,
                received_at: Optional[float] = None, synthetic: bool = False) -> "Future[int]":
        future: "Future[int]" = Future()
        self.enqueue_with(resolver(future), target, key, level, body, expire_after=expire_after, received_at=received_at,
                          synthetic=synthetic)
        return future

    def _run_writer(self, lane: _Lane) -> None:
        # Connected before the first alert arrives, so that alert does not wait for a new session
        # (a refused connect leaves it to the first batch, which retries and reports it).
        with contextlib.suppress(psycopg.Error):
            lane.conn = self._connect_writer()
        run_batches(lane.queue, lambda batch: self._commit(lane, batch), _STOP, MAX_BATCH)
        while True:  # refused, never silently dropped
            try:
                op = lane.queue.get_nowait()
            except queue.Empty:
                break
            if op is not _STOP:
                op.done(None, StoreError("store postgres: closed"))
        self._close_writer_conn(lane)

    def _enqueue_many(self, lane: _Lane, params: List[Tuple[Any, ...]]) -> List[Any]:
        """The batch in one statement, its own transaction, on the lane's own connection: one
        round trip (see oncall_enqueue_many: it locks the keys' queue rows in key order, makes the
        commit durable and NOTIFYs the others); a pooled transaction took four."""
        cols = [dump(list(col)) for dump, col in zip(_COLUMN_DUMPERS, zip(*params))]
        while True:
            fresh = lane.conn is None or lane.conn.closed
            try:
                if fresh:
                    lane.conn = self._connect_writer()
                assert lane.conn is not None
                found = lane.conn.execute(sql.ENQUEUE_MANY, [*cols, self.replica_id]).fetchall()
            except psycopg.OperationalError as exc:
                self._close_writer_conn(lane)
                if not fresh:
                    # An idle connection may predate a database restart: once more on a new one.
                    # Should the lost one have committed, the rows' dedup keys find them stored.
                    continue
                self._reachable = False
                raise _store_error(exc, "query") from None
            except psycopg.Error as exc:
                raise _store_error(exc, "query") from None
            self._reachable = True
            return found

    def _connect_writer(self) -> "psycopg.Connection[Any]":
        """A lane's own autocommit session, named so ``pg_stat_activity`` shows whose it is."""
        return psycopg.connect(self._dsn, autocommit=True, connect_timeout=5,
                               application_name=f"kapacitor-oncall writer {self.replica_id}"[:63])

    @staticmethod
    def _close_writer_conn(lane: _Lane) -> None:
        conn, lane.conn = lane.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _commit(self, lane: _Lane, batch: List[_Insert], retries: int = 2) -> None:
        batch = [op for op in batch if op.seal()]
        if not batch:
            return
        params = [row for op in batch for row in op.params()]
        try:
            rows = self._enqueue_many(lane, params)
        except StoreError as exc:
            self._failed(lane, batch, exc, retries)
            return
        # Each op's first row answers for it (its ``also`` rows follow it, in the same commit).
        results: List[Tuple[int, bool]] = []
        at = 0
        for op in batch:
            results.append((int(rows[at][1]), bool(rows[at][2])))
            at += 1 + len(op.also)
        self._writable, self._last_error = True, None
        dups = sum(1 for _seq, dup in results if dup)
        if dups:
            with self._lock:
                self.duplicates += dups
        for op, (seq, _dup) in zip(batch, results):
            try:
                op.done(seq, None)
            except Exception:  # noqa: BLE001 - the writer thread must outlive a bad callback
                log.error("pg.callback_error", exc_info=True)
        made = [(p[0], p[2]) for p, r in zip(params, rows) if r[3]]  # (target, level) of each new head
        self._wake({t for t, _level in made}, resolves={t for t, level in made if level == "OK"})

    def _failed(self, lane: _Lane, batch: List[_Insert], exc: StoreError, retries: int) -> None:
        """A batch that did not commit: retried after a deadlock, one by one if several, else refused."""
        if retries and ("deadlock" in str(exc) or "could not serialize" in str(exc)):
            self._commit(lane, batch, retries - 1)
            return
        if len(batch) > 1 and self._reachable:
            for op in batch:  # one bad row must not fail its neighbours
                self._commit(lane, [op], 0)
            return
        self._writable = False
        self._last_error = str(exc)
        for op in batch:
            op.done(None, exc)
