"""Accepting on PostgreSQL: a writer thread group-commits queued inserts (one transaction, one
WAL flush for every POST waiting), so ``done(seq)`` and the 202 come only after a durable
commit; the same event posted to two replicas is stored once."""

from __future__ import annotations

import queue
from concurrent.futures import Future
from typing import List, Optional, Tuple

from ..errors import StoreError
from ..outbox_ops import Ticket, resolver
from . import sql
from .base import Done, _PgBase, log
from .rows import _Insert

MAX_BATCH = 1000
_STOP = object()


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
    ) -> Ticket:
        """Queue an insert; ``done(seq, None)`` once committed, ``done(None, StoreError)`` if not.
        The ticket's ``withdraw()`` returning True guarantees the row is never committed."""
        now = self._clock() if received_at is None else received_at
        expire_at = None if expire_after is None else now + expire_after
        op = _Insert(target, key, level, body, now, expire_at, synthetic, done)
        if self._closed:
            op.withdraw()
            done(None, StoreError("store postgres: closed"))
            return op
        self._queue.put(op)
        return op

    def enqueue(self, target: str, key: str, level: str, body: bytes, *, expire_after: Optional[float] = None,
                received_at: Optional[float] = None, synthetic: bool = False) -> "Future[int]":
        future: "Future[int]" = Future()
        self.enqueue_with(resolver(future), target, key, level, body, expire_after=expire_after, received_at=received_at,
                          synthetic=synthetic)
        return future

    def _run_writer(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: List[_Insert] = [first]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
        while True:  # refused, never silently dropped
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is not _STOP:
                op.done(None, StoreError("store postgres: closed"))

    def _commit(self, batch: List[_Insert], retries: int = 2) -> None:
        batch = [op for op in batch if op.seal()]
        if not batch:
            return
        # Sorted by key (stable: a key's events keep their order) so batches of two replicas
        # lock queue rows in the same order and cannot deadlock.
        ordered = sorted(batch, key=lambda op: (op.target, op.key))
        try:
            results: List[Tuple[int, bool]] = []
            with self._tx(durable=True) as cur:
                cur.executemany(sql.ENQUEUE, [op.params() for op in ordered], returning=True)
                while True:
                    found = cur.fetchone()
                    assert found is not None
                    results.append((int(found[0]), bool(found[1])))
                    if not cur.nextset():
                        break
                cur.execute("NOTIFY oncall_enqueue")
        except StoreError as exc:
            if retries and ("deadlock" in str(exc) or "could not serialize" in str(exc)):
                self._commit(batch, retries - 1)
                return
            if len(batch) > 1 and self._reachable:
                for op in batch:  # one bad row must not fail its neighbours
                    self._commit([op], 0)
                return
            self._writable = False
            self._last_error = str(exc)
            for op in batch:
                op.done(None, exc)
            return
        self._writable, self._last_error = True, None
        dups = sum(1 for _seq, dup in results if dup)
        if dups:
            with self._lock:
                self.duplicates += dups
        for op, (seq, _dup) in zip(ordered, results):
            try:
                op.done(seq, None)
            except Exception:  # noqa: BLE001 - the writer thread must outlive a bad callback
                log.error("pg.callback_error", exc_info=True)
        self._on_change()
