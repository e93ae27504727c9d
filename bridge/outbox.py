"""The durable outbox: every accepted alert is a row in SQLite before Kapacitor hears 202.

Durability and throughput come from *group commit*: one writer thread owns the
write connection and drains a queue of operations, applying as many as are
waiting in one transaction, so a hundred concurrent POSTs share one fsync
(WAL, ``synchronous=FULL``: a 202 survives power loss). Every state change
(insert, inflight, delivered, retry, dead, suppressed, auto-resolve, prune)
goes through the same queue, so there is exactly one writer and no lock fights.

Dispatch never scans the table. The writer keeps an in-memory index of the
*head* (lowest pending ``seq``) of every ``(target, key)`` queue, with a heap
per target ordered by due time; the dispatcher claims only heads, so a resolve
never overtakes its trigger and 100k distinct ids cost O(log n) per claim.
The index is rebuilt from SQLite at startup (after rows left ``inflight`` by a
crash go back to ``pending``: at-least-once) and whenever another process
(``replay``) commits to the file, which ``PRAGMA data_version`` reveals.

Memory is O(distinct keys), never O(rows): a long outage grows the file, not
the process.

Invariants (``tests/bridge/test_outbox_invariants.py`` checks them with a
hypothesis state machine against the real SQLite file):

1. At most one row per ``(target, key)`` is in flight, and it is the seq the
   index marks busy for that key.
2. Only heads go out: a claimed row is the lowest-seq unfinished (pending or
   in-flight) row of its key, so an id's events reach the platform in order.
3. Every row that was answered 202 ends in exactly one final state:
   ``delivered``, ``dead``, ``superseded`` (coalesced away, data kept),
   ``suppressed`` (a repeat) or ``silenced`` (held by a silence, see
   :mod:`bridge.silences`). A final row changes again only by an explicit
   ``replay`` (dead -> pending).
4. State changes are checked against the current state: finishing a row that
   is not the key's claimed, unfinished row changes nothing (a late or
   duplicate finish can never resurrect a delivered row).
5. The incident ledger changes in the same transaction as the delivery it
   records: an id is open exactly when its last delivered level was not OK.
6. The index (heads, counts) agrees with the file after every commit.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from . import supervise
from .batching import run_batches
from .errors import StoreError
from .log import get_logger
from .outbox_index import HeadIndex
from .outbox_operator import SqliteOperator
from .outbox_reads import OutboxReads
from .outbox_ops import (
    _WITHDRAWN,
    MAX_BATCH,
    SEAL_LOCK,
    Done,
    MakeResolve,
    _Finish,
    _Insert,
    _mark_inflight,
    _insert_rows,
    _Op,
    _SetInflight,
    Ticket,
    resolver,
)
from .outbox_upkeep import _Coalesce, _FireExpiries, _Probe, _Prune, _Rebuild, _Replay
from .store_ops import Replayed, serving_lock
from .store import Head, Outcome, OutcomeDone, _store_error, check_outcome, open_store

__all__ = ["Outbox", "Ticket"]

class _Call(_Op):
    """A caller's function run inside the writer's transaction; the index reloads after it."""

    __slots__ = ("fn", "done")

    def __init__(self, fn: Callable[[sqlite3.Cursor], Any], done: Optional[Done]) -> None:
        self.fn, self.done = fn, done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> Any:
        result = self.fn(cur)
        _Rebuild(only_if_changed=False).apply(box, cur)
        return result


_STOP = object()
log = get_logger("bridge.outbox")


class Outbox(HeadIndex, OutboxReads, SqliteOperator):
    """The running store: group-committing writer thread plus the in-memory head index."""

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
        commit_timeout: float = 10.0,
    ) -> None:
        self.path = path
        self._on_change = on_change
        self.commit_timeout = commit_timeout
        HeadIndex.__init__(self, clock)
        self._has_expiries = False
        self._data_version = -1
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._writer: Optional[threading.Thread] = None
        self._conn: Optional[sqlite3.Connection] = None
        self._readers: List[sqlite3.Connection] = []
        self._lock_file: Optional[contextlib.ExitStack] = None
        self._local = threading.local()
        self._closed = True
        self._writable = True
        self._last_error: Optional[str] = None
        self.recovered_inflight = 0

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> "Outbox":
        """Open the file, put crash-orphaned inflight rows back to pending, build the index."""
        conn = open_store(self.path, create=True)
        lock = contextlib.ExitStack()
        try:
            lock.enter_context(serving_lock(self.path))
        except BaseException:
            conn.close()
            raise
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA journal_size_limit=67108864")
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            self.recovered_inflight = _Rebuild(only_if_changed=False, recover_inflight=True).apply(self, cur)
            cur.execute("COMMIT")
            self._data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            conn.close()
            lock.close()
            raise _store_error(self.path, exc, "recovery") from None
        self._conn = conn
        self._lock_file = lock
        self._closed = False
        self._writer = supervise.start("outbox-writer", self._run, stopping=lambda: self._closed)
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Commit everything queued, stop the writer, close every connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        if self._writer is not None:
            self._writer.join(timeout)
        if self._conn is not None and (self._writer is None or not self._writer.is_alive()):
            self._conn.close()
        with self._lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "Outbox":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writer_alive(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    # -- the writer thread -----------------------------------------------------

    def _submit(self, op: _Op) -> None:
        if self._closed:
            error = StoreError(f"store {self.path}: closed")
            if op.done is not None:
                op.done(None, error)
                return
            raise error
        self._queue.put(op)

    def _run(self) -> None:
        run_batches(self._queue, lambda batch: self._commit(batch), _STOP, MAX_BATCH)
        # Anything queued after the stop marker is refused, never silently dropped.
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is not _STOP and op.done is not None:
                op.done(None, StoreError(f"store {self.path}: closed"))
        if self._conn is not None:
            self._conn.close()

    def _commit(self, batch: List[_Op]) -> None:
        assert self._conn is not None
        cur = self._conn.cursor()
        live: List[_Op] = []
        try:
            cur.execute("BEGIN IMMEDIATE")
            # Only now, with the write lock held, is a commit imminent: seal the batch so a
            # withdrawn insert is skipped and a sealed one can no longer be withdrawn.
            with SEAL_LOCK:
                live = [op for op in batch if op.seal()]
            results = self._apply_all(live, cur)
            cur.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - any failure must fail the callers, not the thread
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            with SEAL_LOCK:
                for op in live:
                    op.unseal()
            if len(batch) > 1:
                # One bad operation must not fail its neighbours: retry them one by one.
                for op in batch:
                    self._commit([op])
                return
            error: BaseException = exc
            if isinstance(exc, sqlite3.Error):
                error = _store_error(self.path, exc, "commit")
                self._writable = False
                self._last_error = str(error)
            self._failed(batch[0], error)
            return
        self._writable = True
        self._last_error = None
        if len(live) != len(batch):
            withdrawn = StoreError(f"store {self.path}: withdrawn before commit (the client was told NOT stored)")
            for op in batch:
                if isinstance(op, _Insert) and op.phase == _WITHDRAWN:
                    self._failed(op, withdrawn)
        with self._lock:
            for op, result in zip(live, results):
                try:
                    op.after(self, result)
                except Exception:  # noqa: BLE001 - the writer thread must outlive a bug
                    log.error("outbox.index_error", op=type(op).__name__, exc_info=True)
        for op, result in zip(live, results):
            if op.done is not None:
                try:
                    op.done(result, None)
                except Exception:  # noqa: BLE001
                    log.error("outbox.callback_error", op=type(op).__name__, exc_info=True)
        self._on_change()

    def _failed(self, op: _Op, error: BaseException) -> None:
        """Tell the caller; an operation nobody waits for is logged and counted, never lost silently."""
        if op.done is not None:
            try:
                op.done(None, error)
            except Exception:  # noqa: BLE001
                log.error("outbox.callback_error", op=type(op).__name__, exc_info=True)
            return
        if isinstance(op, _Insert) and op.phase == _WITHDRAWN:
            return
        self._count_failure(type(op).__name__.lstrip("_"))
        log.error("outbox.op_failed", op=type(op).__name__, error=str(error))

    def _apply_all(self, batch: List[_Op], cur: sqlite3.Cursor) -> List[Any]:
        """Apply a batch in order, folding runs of inserts / inflight marks into few statements."""
        results: List[Any] = []
        i = 0
        while i < len(batch):
            kind = type(batch[i])
            j = i + 1
            if kind is _Insert or kind is _SetInflight:
                while j < len(batch) and type(batch[j]) is kind:
                    j += 1
            run = batch[i:j]
            if kind is _Insert:
                results.extend(_insert_rows(self, cur, run))  # type: ignore[arg-type]
            elif kind is _SetInflight:
                results.extend(_mark_inflight(cur, run))  # type: ignore[arg-type]
            else:
                results.append(batch[i].apply(self, cur))
            i = j
        return results

    def _run_sync(self, op: _Op, timeout: Optional[float] = None) -> Any:
        future: "Future[Any]" = Future()
        op.done = resolver(future)
        self._submit(op)
        return future.result(timeout if timeout is not None else self.commit_timeout)

    # -- accepting ---------------------------------------------------------------

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
        """Queue an insert; ``done(seq, None)`` runs (in the writer thread) once it is durable,
        ``done(None, StoreError)`` if it could not be committed. ``synthetic`` marks events
        the bridge made itself (auto-resolve, reconcile). ``also``: more targets that get the
        same event in the same transaction (an HA fan-out's members), all rows or none;
        ``done`` gets the first target's seq. The returned ticket's ``withdraw()`` guarantees,
        when it returns True, that no row is ever committed."""
        now = self._clock() if received_at is None else received_at
        expire_at = None if expire_after is None else now + expire_after
        op = _Insert(target, key, level, body, now, expire_at, done, synthetic=synthetic, also=also)
        self._submit(op)
        return op

    def enqueue(
        self,
        target: str,
        key: str,
        level: str,
        body: bytes,
        *,
        expire_after: Optional[float] = None,
        received_at: Optional[float] = None,
        synthetic: bool = False,
    ) -> "Future[int]":
        """Like :meth:`enqueue_with`, returning a future of the row's ``seq``."""
        future: "Future[int]" = Future()
        self.enqueue_with(
            resolver(future),
            target,
            key,
            level,
            body,
            expire_after=expire_after,
            received_at=received_at,
            synthetic=synthetic,
        )
        return future

    # -- dispatching (peek and the index live in HeadIndex) ------------------------

    def coalesce(self, target: str, mode: str, *, limited: bool = False, limit: int = 5000) -> int:
        """Supersede what :func:`bridge.coalesce.keep` drops for the coalescible keys of
        ``target``; returns how many rows were superseded."""
        if mode == "off":
            return 0
        keys = self.coalescible(target, limited=limited)[:limit]
        if not keys:
            return 0
        result = self._run_sync(_Coalesce(target, keys, mode, None))
        return sum(gone for _key, _head, gone in result)

    def claim(self, head: Head) -> bool:
        """Take ``head`` for delivery; its key stays busy until :meth:`finish`."""
        key = (head.target, head.key)
        with self._lock:
            if self._heads.get(key) is not head:
                return False
            del self._heads[key]
            self._busy[key] = head.seq
            self._bump(self._pending, head.target, -1)
        self._submit(_SetInflight(head.seq))
        return True

    def finish(
        self,
        head: Head,
        state: str,
        *,
        attempts: Optional[int] = None,
        next_at: Optional[float] = None,
        error: Optional[str] = None,
        status: Optional[int] = None,
    ) -> None:
        """Record the outcome of a claimed row and wait until it is durable: delivered, dead,
        suppressed, silenced (held by a silence, see :mod:`bridge.silences`), or pending again
        (with ``attempts`` and ``next_at`` so a restart resumes the schedule). Delivery uses
        :meth:`finish_many`, which does not wait."""
        check_outcome(state, next_at)
        self._run_sync(_Finish(head, state, attempts, next_at, error, status, None))

    def finish_many(self, outcomes: Sequence[Outcome], done: OutcomeDone) -> None:
        """Record several outcomes (see :meth:`finish`); returns at once, ``done(outcome, error)``
        runs per outcome in the writer thread. The writer folds them into its group commits."""
        for o in outcomes:
            check_outcome(o.state, o.next_at)
        for o in outcomes:
            op = _Finish(o.head, o.state, o.attempts, o.next_at, o.error, o.status, None)
            op.done = _bind(done, o)
            self._submit(op)

    @contextlib.contextmanager
    def hold(self, target: str, keys: Iterable[str]) -> Iterator[List[str]]:
        """Keep deliveries of the idle ones among ``keys`` from starting during the block;
        yields those keys. Rows enqueued meanwhile wait and become claimable on exit."""
        held: List[str] = []
        with self._lock:
            for key in keys:
                k = (target, key)
                if k in self._heads or k in self._busy or k in self._held:
                    continue
                self._held.add(k)
                held.append(key)
        try:
            yield held
        finally:
            with self._lock:
                for key in held:
                    k = (target, key)
                    self._held.discard(k)
                    parked = self._parked.pop(k, None)
                    if parked is not None:
                        self._offer(parked)
            self._on_change()

    # -- housekeeping ----------------------------------------------------------------

    def fire_expiries(self, make: MakeResolve, wait: bool = False) -> List[Tuple[int, str, str]]:
        """Enqueue synthetic resolves for every due auto-resolve timer."""
        op = _FireExpiries(make, None)
        if wait:
            return list(self._run_sync(op))
        self._submit(op)
        return []

    def prune(self, keep: int, forget_before: Optional[float] = None, wait: bool = False) -> None:
        """Bound the delivered/suppressed history; dead letters are never pruned."""
        op = _Prune(keep, forget_before, None)
        if wait:
            self._run_sync(op)
        else:
            self._submit(op)

    def check_external(self, wait: bool = False) -> None:
        """Pick up rows another process (``replay``) changed, if any."""
        op = _Rebuild(only_if_changed=True)
        if wait:
            self._run_sync(op)
        else:
            self._submit(op)

    def replay(self, target: Optional[str] = None, key: Optional[str] = None, *, force: bool = False) -> Replayed:
        """Dead letters back to pending (fresh attempts and age), order-safe: see
        :func:`bridge.store_ops.replay_rows`."""
        result: Replayed = self._run_sync(_Replay(target, key, force, None))
        return result

    def transact(self, fn: Callable[[sqlite3.Cursor], Any], timeout: Optional[float] = None) -> Any:
        """Run ``fn(cursor)`` in the writer's next commit, then reload the index from the file;
        returns what ``fn`` returned. For changes of non-pending rows made elsewhere
        (silences release held rows with it), so they cannot race the writer's own."""
        return self._run_sync(_Call(fn, None), timeout)

    def probe(self, timeout: float = 5.0) -> bool:
        """Prove the store can commit right now (a real fsync'd write)."""
        try:
            return bool(self._run_sync(_Probe(None), timeout))
        except Exception:  # noqa: BLE001 - any failure means "not writable"
            return False


def _bind(done: OutcomeDone, outcome: Outcome) -> Done:
    """``done`` of one writer operation, reporting ``outcome``."""

    def call(_result: Any, error: Optional[BaseException]) -> None:
        done(outcome, error)

    return call
