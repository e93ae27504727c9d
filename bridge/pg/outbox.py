"""The outbox on PostgreSQL: the same promises as the SQLite store, for N replicas.

* **Accepting**: a writer thread group-commits inserts (one transaction, one WAL
  flush for every POST waiting), so ``done(seq)`` and the 202 come only after a
  durable commit. The same event posted to two replicas is stored once (a dedup
  key over target, id, level and the body, which carries the event time) and both
  get the seq. A ``NOTIFY`` wakes the other replicas' dispatchers.
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

import contextlib
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import psycopg
import psycopg_pool

from ..errors import StoreError
from ..ledger import Incident, LastTold
from ..log import get_logger
from ..store import Forwarded, Head, Outcome, OutcomeDone, Row, Stats
from . import sql
from ..outbox_ops import Ticket, resolver
from ..store_ops import Replayed
from .coalesce import coalesce_keys, coalescible_keys
from .finish import finish_rows
from .rows import _bookkeeping_commits, _Claimed, _Insert, _store_error, replay_rows
from .schema import migrate

__all__ = ["PgOutbox", "SINGLETON_JOBS"]

log = get_logger("bridge.pg")

Done = Callable[[Any, Optional[BaseException]], None]
MakeResolve = Callable[[str, str, bytes, float], Optional[bytes]]
#: Work that must happen on one replica at a time.
SINGLETON_JOBS = ("expiry", "prune", "heartbeat", "keepalive", "reconcile")
MAX_BATCH = 1000
#: Seconds the dispatcher's "which keys are coalescible" answer is reused (one query per round
#: and target would cost more than the coalescing saves).
COALESCE_RECHECK = 1.0
_STOP = object()


class PgOutbox:
    """A replica's handle on the shared outbox (satisfies :class:`bridge.backend.Store`)."""

    def __init__(
        self,
        dsn: str,
        *,
        replica_id: str,
        lease: float = 15.0,
        pool_size: int = 8,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
        commit_timeout: float = 10.0,
        claim_batch: int = 8,
    ) -> None:
        self._dsn = dsn
        self.replica_id = replica_id
        self.lease = lease
        self.commit_timeout = commit_timeout
        self.claim_batch = claim_batch
        self.recovered_inflight = 0
        #: Rows this replica took over after another's lease ran out.
        self.resumed = 0
        #: Posts that were already stored (another replica or a retry had them).
        self.duplicates = 0
        self._clock = clock
        self._on_change = on_change
        self._pool_size = pool_size
        self._pool: Optional["psycopg_pool.ConnectionPool[Any]"] = None
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._ready: Dict[str, Deque[_Claimed]] = {}
        self._busy: Dict[int, _Claimed] = {}
        self._held: Dict[str, float] = {}
        self._threads: List[threading.Thread] = []
        #: Outcome batches for the finisher thread (see :meth:`finish_many`).
        self._finishing: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._finisher: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._closed = True
        self._writable = True
        self._reachable = True
        self._last_error: Optional[str] = None
        self._stats_cache: Optional[Tuple[float, Stats]] = None
        self._coalescible_cache: Dict[Tuple[str, bool], Tuple[float, List[str]]] = {}

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
        for name, run in (("pg-writer", self._run_writer), ("pg-keeper", self._run_keeper),
                          ("pg-listener", self._run_listener)):
            thread = threading.Thread(target=run, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, hand our unfinished rows and singletons back, disconnect."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            finisher, self._finisher = self._finisher, None
        if finisher is not None:  # outcomes queued before the close are committed first
            self._finishing.put(_STOP)
            finisher.join(timeout)
        self._queue.put(_STOP)
        self._threads[0].join(timeout)
        self._stop.set()
        for thread in self._threads[1:]:
            thread.join(timeout)
        self._threads = []
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
        return bool(self._threads) and self._threads[0].is_alive()

    @contextlib.contextmanager
    def _tx(self, timeout: Optional[float] = None, durable: bool = False) -> Iterator["psycopg.Cursor[Any]"]:
        """One transaction on a pooled connection; database errors become StoreError.

        ``durable``: the commit waits for the WAL flush (accepted alerts, operator actions,
        rate-limit tokens, the health probe). Everything else is bookkeeping whose loss in a
        *database* crash only means a row is delivered once more (claims, outcomes, leases).
        """
        if self._pool is None:
            raise StoreError("store postgres: not open")
        try:
            with self._pool.connection(timeout or self.commit_timeout) as conn:
                with conn.transaction():
                    cur = conn.cursor()
                    if durable:
                        cur.execute("SET LOCAL synchronous_commit = on")
                    yield cur
        except psycopg_pool.PoolTimeout as exc:
            self._reachable = False
            raise _store_error(exc, "connect") from None
        except psycopg.OperationalError as exc:
            self._reachable = False
            raise _store_error(exc, "query") from None
        except psycopg.Error as exc:
            raise _store_error(exc, "query") from None
        self._reachable = True

    def _release_own(self) -> int:
        """Rows claimed by this replica id (an earlier life, or never started) back to pending."""
        with self._lock:
            self._ready.clear()
        with self._tx() as cur:
            rows = cur.execute(sql.RELEASE_OWN, (self.replica_id,)).fetchall()
            for target, key, seq in rows:
                cur.execute(sql.BACK_TO_PENDING, (seq,))
                cur.execute(sql.REFRESH, (target, key))
        return len(rows)

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

    # -- dispatching ------------------------------------------------------------------

    def peek(self, target: str, now: float, *, resolves_first: bool = False) -> Tuple[Optional[Head], Optional[float]]:
        """A claimed, ready head of ``target`` (claiming a batch in the database when none is
        left here), or the next due time.

        With ``resolves_first`` (the target is rate limited) a ready resolve goes first: one
        claimed here already, else one claimed in the database before any trigger; and claims
        take one head at a time, so no batch of triggers waits here ahead of a resolve.
        """
        with self._lock:
            ready = self._ready.get(target)
            if ready and resolves_first:
                for item in ready:
                    if item.head.level == "OK":
                        return item.head, None
            elif ready:
                return ready[0].head, None
        if resolves_first:
            rows, _due = self._claim(sql.CLAIM_RESOLVES, target, now, 1, due=False)
            if rows:
                return self._keep_claimed(target, rows, front=True), None
            with self._lock:
                ready = self._ready.get(target)
                if ready:
                    return ready[0].head, None
        rows, due = self._claim(sql.CLAIM, target, now, 1 if resolves_first else self.claim_batch, due=True)
        if not rows:
            return None, due
        return self._keep_claimed(target, rows), None

    def _claim(self, statement: str, target: str, now: float, n: int, *, due: bool) -> Tuple[List[Any], Optional[float]]:
        """Claimed rows, and when there are none (and ``due``) the target's next due time."""
        with self._tx() as cur:
            rows = cur.execute(statement, {"target": target, "now": now, "n": n, "me": self.replica_id,
                                           "lease": self.lease}).fetchall()
            found = None if rows or not due else cur.execute(sql.NEXT_DUE, (target,)).fetchone()
        return rows, None if found is None or found[0] is None else float(found[0])

    def _keep_claimed(self, target: str, rows: List[Any], *, front: bool = False) -> Head:
        """Hold freshly claimed rows here in due order; the head to hand out first."""
        claimed = [self._claimed(r) for r in sorted(rows, key=lambda r: (r[9], r[0]))]
        with self._lock:
            ready = self._ready.setdefault(target, deque())
            if front:
                ready.extendleft(reversed(claimed))
            else:
                ready.extend(claimed)
            return ready[0].head

    @staticmethod
    def _claimed(r: Any) -> _Claimed:
        row = sql.to_row(r)
        head = Head(row.target, row.key, row.seq, row.next_attempt_at, row.level, row.received_at)
        fwd = None if r[13] is None else Forwarded(r[13], float(r[14]))
        return _Claimed(head, row, fwd)

    def coalescible(self, target: str, now: Optional[float] = None, *, limited: bool = False) -> List[str]:
        """Keys of ``target`` with a backlog of several pending rows and nothing in flight (on any
        replica). Asked without ``now`` (the dispatcher, every round) the answer is reused for
        :data:`COALESCE_RECHECK` seconds unless this replica saw a delivery fail meanwhile: a
        backlog builds over seconds, and :meth:`coalesce` re-checks under the queue-row locks."""
        explicit = now is not None
        now = self._clock() if now is None else now
        if not explicit:
            with self._lock:
                cached = self._coalescible_cache.get((target, limited))
            if cached is not None and time.monotonic() - cached[0] < COALESCE_RECHECK:
                return list(cached[1])
        with self._tx() as cur:
            keys = coalescible_keys(cur, target, now, limited=limited)
        with self._lock:
            self._coalescible_cache[(target, limited)] = (time.monotonic(), keys)
        return list(keys)

    def coalesce(self, target: str, mode: str, *, limited: bool = False, limit: int = 5000) -> int:
        """Supersede what :func:`bridge.coalesce.keep` drops for the coalescible keys of ``target``
        (see :mod:`.coalesce`: queue rows locked, keys in flight left alone); returns how many."""
        if mode == "off":
            return 0
        now = self._clock()
        with self._tx() as cur:
            keys = coalescible_keys(cur, target, now, limited=limited, limit=limit)
            gone = coalesce_keys(cur, target, keys, mode, now) if keys else 0
        with self._lock:
            self._coalescible_cache.pop((target, limited), None)
        if gone:
            self._on_change()
        return gone

    def claim(self, head: Head) -> bool:
        """Hand out a head ``peek`` returned (it is already ours in the database)."""
        with self._lock:
            ready = self._ready.get(head.target)
            if not ready:
                return False
            for item in ready:
                if item.head is head:
                    ready.remove(item)
                    self._busy[head.seq] = item
                    return True
        return False

    def load(self, seq: int) -> Optional[Row]:
        with self._lock:
            item = self._busy.get(seq)
        if item is not None:
            return item.row
        with self._tx() as cur:
            assert cur.connection is not None
            return sql.load_row(cur.connection, seq)

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

    def forwarded(self, target: str, key: str) -> Optional[Forwarded]:
        with self._lock:
            for item in self._ready.get(target, ()):
                if item.head.key == key:
                    return item.forwarded
        with self._tx() as cur:
            found = cur.execute("SELECT fwd_level, fwd_received_at FROM oncall_queue WHERE target = %s AND key = %s",
                                (target, key)).fetchone()
        return None if found is None or found[0] is None else Forwarded(found[0], float(found[1]))

    def finish(self, head: Head, state: str, *, attempts: Optional[int] = None, next_at: Optional[float] = None,
               error: Optional[str] = None, status: Optional[int] = None, wait: bool = True,
               done: Optional[Done] = None) -> None:
        """Record a claimed row's outcome; a row whose lease another replica took is left alone.
        ``done`` (see :meth:`bridge.backend.Store.finish`) is called here, after the commit."""
        if state not in ("delivered", "dead", "suppressed", "pending"):
            raise ValueError(f"bad final state {state!r}")
        if state == "pending" and next_at is None:
            raise ValueError("a retry needs next_at")
        if done is not None:
            try:
                self.finish(head, state, attempts=attempts, next_at=next_at, error=error, status=status)
            except (StoreError, TimeoutError) as exc:
                done(None, exc)
            else:
                done(None, None)
            return
        outcome = Outcome(head, state, attempts, next_at, error, status)
        now = self._clock()
        with self._tx() as cur:
            stale = self._finish_in(cur, outcome, now)
        self._finished([(outcome, stale)])

    def finish_many(self, outcomes: Sequence[Outcome], done: OutcomeDone) -> None:
        """Record several outcomes; returns at once. A finisher thread commits everything
        queued meanwhile in one transaction (keys locked in order, statements pipelined) and
        calls ``done(outcome, error)`` for each after the commit or its failure."""
        for o in outcomes:
            if o.state not in ("delivered", "dead", "suppressed", "pending"):
                raise ValueError(f"bad final state {o.state!r}")
            if o.state == "pending" and o.next_at is None:
                raise ValueError("a retry needs next_at")
        if not outcomes:
            return
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                if self._finisher is None or not self._finisher.is_alive():
                    self._finisher = threading.Thread(target=self._run_finisher, name="pg-finisher", daemon=True)
                    self._finisher.start()
                self._finishing.put((list(outcomes), done))
        if closed:
            for o in outcomes:
                done(o, StoreError("store postgres: closed"))

    def _run_finisher(self) -> None:
        stop = False
        while not stop:
            first = self._finishing.get()
            if first is _STOP:
                break
            batch = [first]
            while True:
                try:
                    nxt = self._finishing.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._finish_batch(batch)

    def _finish_batch(self, batch: List[Tuple[List[Outcome], OutcomeDone]], retries: int = 2) -> None:
        # Keys locked in (target, key) order, like the writer's batches: no deadlock between them.
        ordered = sorted((o for outcomes, _done in batch for o in outcomes), key=lambda o: (o.head.target, o.head.key))
        now = self._clock()
        error: Optional[BaseException] = None
        results: List[Tuple[Outcome, bool]] = []
        try:
            with self._tx() as cur:
                results = finish_rows(cur, ordered, self.replica_id, now)
        except (StoreError, TimeoutError) as exc:
            if retries and "deadlock" in str(exc):
                self._finish_batch(batch, retries - 1)
                return
            error = exc
        if error is None:
            self._finished(results)
        for outcomes, done in batch:
            for o in outcomes:
                try:
                    done(o, error)
                except Exception:  # noqa: BLE001 - the finisher thread must outlive a bad callback
                    log.error("pg.callback_error", exc_info=True)

    def _finish_in(self, cur: "psycopg.Cursor[Any]", o: Outcome, now: float) -> bool:
        """Apply one outcome in the open transaction; True if the row is no longer ours (stale)."""
        head, state = o.head, o.state
        found = cur.execute(sql.LOCK_KEY, (head.target, head.key)).fetchone()
        if found is None or found[0] != head.seq or found[1] != self.replica_id:
            return True
        if state == "pending":
            cur.execute(sql.FINISH_PENDING, (o.attempts, o.next_at, o.error, o.status, head.seq))
        elif state == "suppressed":
            cur.execute(sql.FINISH_SUPPRESSED, (now, head.seq))
        else:
            body = cur.execute(sql.FINISH_FINAL, (state, o.attempts, o.error, o.status, now, self.replica_id,
                                                  head.seq)).fetchone()
            if state == "delivered" and body is not None:
                cur.execute(sql.SET_FORWARDED, (head.level, head.received_at, head.target, head.key))
                sql.record_delivery(cur, head.target, head.key, head.level, bytes(body[0]), head.seq, now)
        cur.execute(sql.REFRESH, (head.target, head.key))
        return False

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
        self._on_change()

    # -- the incident ledger -------------------------------------------------------------

    def incidents(self, target: Optional[str] = None) -> List[Incident]:
        with self._tx() as cur:
            assert cur.connection is not None
            return sql.open_incidents(cur.connection, target)

    def told(self, target: str, key: str) -> Optional[Incident]:
        with self._tx() as cur:
            assert cur.connection is not None
            return sql.told(cur.connection, target, key)

    def last_told(self, target: str, key: str) -> Optional[LastTold]:
        with self._tx() as cur:
            assert cur.connection is not None
            return sql.last_told(cur.connection, target, key)

    def idle(self, target: str, key: str) -> bool:
        with self._tx() as cur:
            found = cur.execute(sql.IDLE, (target, key)).fetchone()
        return found is None or bool(found[0])

    @contextlib.contextmanager
    def hold(self, target: str, keys: Iterable[str]) -> Iterator[List[str]]:
        """Keep deliveries of the idle ones among ``keys`` from starting (on every replica)."""
        wanted = sorted(set(keys))
        with self._tx() as cur:
            cur.execute(sql.ENSURE_QUEUES, (target, wanted))
            # A hold outlives its holder by at most a few leases (keep-alive holds for one re-post).
            held = [r[0] for r in cur.execute(sql.HOLD, {"me": self.replica_id, "target": target, "keys": wanted,
                                                         "hold": max(60.0, 4 * self.lease)})]
        try:
            yield held
        finally:
            if held:
                with self._tx() as cur:
                    cur.execute(sql.RELEASE_HOLD, (target, held, self.replica_id))
            self._on_change()

    # -- housekeeping -------------------------------------------------------------------

    def _singleton(self, name: str, cur: "psycopg.Cursor[Any]") -> bool:
        """Inside a transaction: True (and the lease row locked until commit) if we hold ``name``."""
        return cur.execute(sql.HOLD_SINGLETON, (name, self.replica_id)).fetchone() is not None

    def fire_expiries(self, make: MakeResolve, wait: bool = False) -> List[Tuple[int, str, str]]:
        """Synthetic resolves for due auto-resolve timers; only on the replica holding ``expiry``."""
        now = self._clock()
        fired: List[Tuple[int, str, str]] = []
        with self._tx() as cur:
            if not self._singleton("expiry", cur):
                return []
            for target, key in cur.execute(sql.DUE_EXPIRIES, (now,)).fetchall():
                cur.execute(sql.LOCK_QUEUE, (target, key))  # queue row before expiry row, like inserts
                found = cur.execute(sql.TAKE_EXPIRY, (target, key, now)).fetchone()
                if found is None:
                    continue
                body = make(target, key, bytes(found[0]), now)
                if body is None:
                    continue
                seq = cur.execute(sql.ENQUEUE, (target, key, "OK", body, now, None, True, None)).fetchone()
                assert seq is not None
                fired.append((int(seq[0]), target, key))
        if fired:
            self._on_change()
        return fired

    def prune(self, keep: int, forget_before: Optional[float] = None, wait: bool = False) -> None:
        """Bound the delivered/suppressed history (dead letters stay); only on the ``prune`` holder."""
        with self._tx() as cur:
            if not self._singleton("prune", cur):
                return
            for state in ("delivered", "suppressed"):
                cur.execute(sql.PRUNE, (state, 5000, keep))
            if forget_before is not None:
                cur.execute(sql.FORGET, (forget_before,))
            cur.execute(sql.DROP_IDLE_QUEUES)

    def check_external(self, wait: bool = False) -> None:
        """Other processes commit to the same database continuously; the keeper and NOTIFY cover it."""

    def replay(self, target: Optional[str] = None, key: Optional[str] = None, *, force: bool = False) -> Replayed:
        """Dead letters back to pending with fresh attempts and age, order-safe (see
        :func:`bridge.pg.rows.replay_rows`)."""
        with self._tx(durable=True) as cur:
            result = replay_rows(cur, target, key, self._clock(), force=force)
        self._on_change()
        return result

    def probe(self, timeout: float = 5.0) -> bool:
        """A real commit right now (it also tells the others this replica is alive)."""
        try:
            with self._tx(timeout, durable=True) as cur:
                cur.execute("UPDATE oncall_replica SET seen_at = oncall_now() WHERE id = %s", (self.replica_id,))
            return True
        except StoreError:
            return False

    # -- the keeper: leases, singletons, resumption ---------------------------------------------

    def _run_keeper(self) -> None:
        interval = max(0.2, min(2.0, self.lease / 4))
        while not self._stop.wait(interval):
            try:
                self.keep()
            except StoreError as exc:
                with self._lock:
                    self._held.clear()
                log.warning("pg.keeper_failed", error=str(exc))
            except Exception:  # noqa: BLE001 - the keeper must outlive a bug
                log.error("pg.keeper_crashed", exc_info=True)

    def keep(self) -> None:
        """One keeper round: renew our leases, resume expired ones, take or renew singletons."""
        started = time.monotonic()
        with self._tx() as cur:
            cur.execute(sql.RENEW, (self.lease, self.replica_id))
            resumed = cur.execute(sql.RESUME_EXPIRED, (self._clock(),)).fetchone()
            held = {r[0] for name in SINGLETON_JOBS for r in cur.execute(
                sql.TAKE_SINGLETON, {"me": self.replica_id, "lease": self.lease, "name": name}).fetchall()}
        n = int(resumed[0]) if resumed else 0
        with self._lock:
            # Believed held for less than the lease, counted from before the round started.
            until = started + self.lease * 0.8
            self._held = {name: until for name in held}
            self.resumed += n
        if n:
            log.warning("pg.resumed", rows=n, hint="another replica's lease ran out; delivering its rows")
            self._on_change()

    def _run_listener(self) -> None:
        """Wake the dispatcher when another replica accepts alerts (LISTEN/NOTIFY)."""
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute("LISTEN oncall_enqueue")
                    while not self._stop.is_set():
                        if any(True for _ in conn.notifies(timeout=0.5, stop_after=1)):
                            self._on_change()
            except psycopg.Error:
                self._stop.wait(1.0)

    def holds(self, job: str) -> bool:
        """Whether this replica holds the singleton ``job`` (with margin before its lease ends)."""
        with self._lock:
            until = self._held.get(job)
        return until is not None and time.monotonic() < until

    def singletons(self) -> Dict[str, bool]:
        return {name: self.holds(name) for name in SINGLETON_JOBS}

    def reachable(self) -> bool:
        return self._reachable

    # -- statistics -----------------------------------------------------------------------

    def stats(self) -> Stats:
        """Queue depth across all replicas (cached for a second: every scrape is a query)."""
        now = time.monotonic()
        cached = self._stats_cache
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        pending: Dict[str, int] = {}
        inflight: Dict[str, int] = {}
        dead: Dict[str, int] = {}
        oldest: Optional[float] = None
        try:
            with self._tx(3.0) as cur:
                for target, state, count in cur.execute(sql.STATS):
                    {"pending": pending, "inflight": inflight, "dead": dead}[state][target] = int(count)
                found = cur.execute(sql.OLDEST).fetchone()
                oldest = None if found is None or found[0] is None else float(found[0])
        except StoreError as exc:
            self._last_error = str(exc)
            return Stats({}, {}, {}, None, False, str(exc))
        with self._lock:  # claimed here but not started: still waiting, as far as anyone can tell
            for target, ready in self._ready.items():
                if ready:
                    inflight[target] = inflight.get(target, 0) - len(ready)
                    pending[target] = pending.get(target, 0) + len(ready)
        inflight = {t: n for t, n in inflight.items() if n > 0}
        age = None if oldest is None else max(0.0, self._clock() - oldest)
        stats = Stats(pending, inflight, dead, age, self._writable, self._last_error)
        self._stats_cache = (now, stats)
        return stats

    def targets_with_rows(self) -> Set[str]:
        stats = self.stats()
        return {t for t, n in stats.pending.items() if n} | {t for t, n in stats.dead.items() if n}
