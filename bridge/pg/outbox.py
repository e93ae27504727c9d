"""The outbox on PostgreSQL: the same promises as the SQLite store, for N replicas.

* **Accepting**: a writer thread (``[store] writers``, one by default; with more, an id
  always takes the same one) group-commits inserts (one transaction, one WAL flush for every
  POST waiting), so ``done(seq)`` and the 202 come only after a durable commit. The same
  event posted to two replicas is stored once (a dedup key over target, id, level and the
  body, which carries the event time) and both get the seq. A ``NOTIFY`` wakes the other replicas' dispatchers.
* **Claiming**: ``peek`` claims a few ready heads of a target at once in the
  database (``FOR UPDATE SKIP LOCKED``), marks them in flight with this replica's
  id and a lease, and hands them out one by one; at most one row per key is in
  flight across all replicas (see :mod:`.schema` for why seqs follow commit order).
* **Leases**: a keeper thread renews this replica's leases, resumes rows whose
  lease ran out (their replica died: at-least-once, counted in ``resumed``), and
  takes or renews the singleton jobs (expiry, prune, heartbeat, keep-alive,
  reconcile). A singleton's work runs in a transaction that locks its lease row,
  so two replicas never run it at once even around a takeover.
* **Failures**: every database error becomes :class:`~bridge.errors.StoreError`:
  POST answers 503, delivery retries its bookkeeping and pauses; the pool
  reconnects when the database is back.
"""

from __future__ import annotations

import threading

import psycopg
import psycopg_pool

from ..errors import StoreError
from .base import SINGLETON_JOBS, _PgBase, log
from .batches import _Batches
from .claims import _Claims
from .jobs import _Jobs
from .operator import PgOperator
from .reads import _Reads
from .rows import _bookkeeping_commits, _store_error
from .schema import migrate
from .writer import _STOP, _Writer

__all__ = ["PgOutbox", "SINGLETON_JOBS"]


class PgOutbox(_Writer, _Claims, _Batches, _Jobs, _Reads, _PgBase, PgOperator):
    """A replica's handle on the shared outbox (satisfies :class:`bridge.backend.Store`).

    Its parts live in their own modules: :mod:`.writer` (accepting), :mod:`.claims` (claims,
    outcomes, coalescing), :mod:`.batches` (the delivery engine's batches), :mod:`.jobs` (singletons, keeper, listener, replay, probe) and
    :mod:`.reads` (ledger, holds, stats), over the shared state in :mod:`.base`; :mod:`.operator`
    adds what the operator's tools use (silences, the status page, dropping a dead letter).
    """

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> "PgOutbox":
        """Connect, migrate under the advisory lock, take back our own orphaned rows, start threads."""
        try:
            with psycopg.connect(self._dsn, connect_timeout=10) as conn:
                migrate(conn, "postgres")
        except psycopg.Error as exc:
            raise _store_error(exc, "open") from None
        self._pool = psycopg_pool.ConnectionPool(
            self._dsn, min_size=2, max_size=self._pool_size, open=False, timeout=self.commit_timeout,
            check=psycopg_pool.ConnectionPool.check_connection, name=f"oncall-{self.replica_id}",
            kwargs={"connect_timeout": 5}, configure=_bookkeeping_commits,
        )
        try:
            self._pool.open(wait=True, timeout=30.0)
        except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
            self._pool.close()
            raise _store_error(exc, "connect") from None
        try:
            self.recovered_inflight = self._release_own()
            with self._tx() as cur:
                cur.execute(
                    "INSERT INTO oncall_replica (id, started_at, seen_at) VALUES (%s, oncall_now(), oncall_now())"
                    " ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, seen_at = excluded.seen_at",
                    (self.replica_id,),
                )
                for name in SINGLETON_JOBS:
                    cur.execute("INSERT INTO oncall_singleton (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,))
        except StoreError:
            self._pool.close()
            raise
        try:
            self.keep()
        except StoreError as exc:
            log.warning("pg.keeper_failed", error=str(exc))
        self._closed = False
        self._stop.clear()
        self._writers = [threading.Thread(target=self._run_writer, args=(lane,), name=f"pg-writer-{n}", daemon=True)
                         for n, lane in enumerate(self._lanes)]
        self._threads = [threading.Thread(target=run, name=name, daemon=True)
                         for name, run in (("pg-keeper", self._run_keeper), ("pg-listener", self._run_listener))]
        for thread in self._writers + self._threads:
            thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, hand our unfinished rows and singletons back, disconnect."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
        self._stop_finisher(timeout)  # outcomes queued before the close are committed first
        for lane in self._lanes:
            lane.queue.put(_STOP)
        for thread in self._writers:
            thread.join(timeout)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._writers, self._threads = [], []
        try:
            self._release_own()
            with self._tx() as cur:
                cur.execute("UPDATE oncall_singleton SET owner = NULL, lease_until = 0 WHERE owner = %s",
                            (self.replica_id,))
        except StoreError as exc:
            log.warning("pg.release_failed", error=str(exc), hint="other replicas resume the rows after the lease")
        assert self._pool is not None
        self._pool.close(timeout)

    def __enter__(self) -> "PgOutbox":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writer_alive(self) -> bool:
        return bool(self._writers) and all(thread.is_alive() for thread in self._writers)
