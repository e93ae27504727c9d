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
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from .errors import StoreError
from .ledger import Incident, open_incidents, record_delivery
from .ledger import told as _told
from .log import get_logger
from .store import (
    _ROW_COLUMNS,
    Forwarded,
    Head,
    Row,
    Stats,
    _replay,
    _row,
    _store_error,
    open_store,
)

__all__ = ["Outbox"]

#: Most operations folded into one transaction; bounds commit latency under a flood.
MAX_BATCH = 2000
_PRUNE_CHUNK = 5000

Key = Tuple[str, str]
#: What a finish of a row that is no longer claimed returns: nothing was changed.
_STALE = object()
Done = Callable[[Any, Optional[BaseException]], None]
MakeResolve = Callable[[str, str, bytes, float], Optional[bytes]]

# -- operations run by the writer thread ------------------------------------------


class _Op:
    """One unit of work for the writer. ``apply`` runs inside the transaction;
    ``after`` runs after COMMIT with the index lock held; ``done`` is the caller's callback."""

    done: Optional[Done] = None

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> Any:
        raise NotImplementedError

    def after(self, box: "Outbox", result: Any) -> None:
        """Update the in-memory index; only called once the change is durable."""


class _Insert(_Op):
    __slots__ = ("target", "key", "level", "body", "received_at", "expire_at", "synthetic", "done")

    def __init__(
        self,
        target: str,
        key: str,
        level: str,
        body: bytes,
        received_at: float,
        expire_at: Optional[float],
        done: Optional[Done],
        synthetic: bool = False,
    ) -> None:
        self.target, self.key, self.level, self.body = target, key, level, body
        self.received_at, self.expire_at, self.done, self.synthetic = received_at, expire_at, done, synthetic

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> int:
        return _insert_rows(box, cur, [self])[0]

    def after(self, box: "Outbox", seq: int) -> None:
        box._bump(box._pending, self.target, 1)
        box._offer(Head(self.target, self.key, seq, self.received_at, self.level, self.received_at))


_UPSERT_EXPIRY = (
    "INSERT INTO expiry (target, key, due_at, body) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (target, key) DO UPDATE SET due_at = excluded.due_at, body = excluded.body"
)
_DELETE_EXPIRY = "DELETE FROM expiry WHERE target = ? AND key = ?"
#: Rows per multi-row statement; powers of two keep the statement cache small.
_CHUNK = 256


@functools.lru_cache(maxsize=16)
def _insert_sql(rows: int) -> str:
    values = ",".join(["(?, ?, ?, ?, ?, ?, 'pending', ?, ?)"] * rows)
    return (
        "INSERT INTO outbox (target, key, level, body, received_at, queued_at, state, next_attempt_at, synthetic)"
        f" VALUES {values}"
    )


@functools.lru_cache(maxsize=16)
def _inflight_sql(rows: int) -> str:
    marks = ",".join(["?"] * rows)
    return f"UPDATE outbox SET state = 'inflight' WHERE state = 'pending' AND seq IN ({marks})"


def _chunks(count: int) -> List[int]:
    """Split ``count`` into power-of-two sizes of at most ``_CHUNK``."""
    sizes = []
    while count:
        size = min(_CHUNK, 1 << (count.bit_length() - 1))
        sizes.append(size)
        count -= size
    return sizes


def _insert_rows(box: "Outbox", cur: sqlite3.Cursor, ops: Sequence["_Insert"]) -> List[int]:
    """Insert a run of rows with one statement per chunk.

    Each ``execute`` releases and re-takes the GIL; one per row would make the
    writer queue behind the event loop thread for every row (the convoy effect).
    With the write lock held, AUTOINCREMENT hands out consecutive seqs, so the
    chunk's seqs end at ``lastrowid``.
    """
    seqs: List[int] = []
    start = 0
    for size in _chunks(len(ops)):
        params: List[Any] = []
        for op in ops[start : start + size]:
            params += (op.target, op.key, op.level, op.body, op.received_at, op.received_at,
                       op.received_at, int(op.synthetic))
        cur.execute(_insert_sql(size), params)
        last = int(cur.lastrowid)  # type: ignore[arg-type]
        seqs.extend(range(last - size + 1, last + 1))
        start += size
    # The last event of a key decides its auto-resolve timer.
    final: Dict[Key, "_Insert"] = {}
    for op in ops:
        final[(op.target, op.key)] = op
    upserts = [(op.target, op.key, op.expire_at, op.body) for op in final.values() if op.expire_at is not None]
    if upserts:
        cur.executemany(_UPSERT_EXPIRY, upserts)
    if box._has_expiries:
        deletes = [k for k, op in final.items() if op.expire_at is None]
        if deletes:
            cur.executemany(_DELETE_EXPIRY, deletes)
    if upserts:
        box._has_expiries = True
    return seqs


def _mark_inflight(cur: sqlite3.Cursor, ops: Sequence["_SetInflight"]) -> List[None]:
    start = 0
    for size in _chunks(len(ops)):
        cur.execute(_inflight_sql(size), [op.seq for op in ops[start : start + size]])
        start += size
    return [None] * len(ops)


class _SetInflight(_Op):
    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> None:
        cur.execute("UPDATE outbox SET state = 'inflight' WHERE seq = ? AND state = 'pending'", (self.seq,))


def _next_head(cur: sqlite3.Cursor, target: str, key: str) -> Optional[Head]:
    found = cur.execute(
        "SELECT seq, next_attempt_at, level, received_at FROM outbox"
        " WHERE target = ? AND key = ? AND state = 'pending' ORDER BY seq LIMIT 1",
        (target, key),
    ).fetchone()
    if found is None:
        return None
    return Head(target, key, found[0], found[1], found[2], found[3])


class _Finish(_Op):
    """A claimed row reached a final state (delivered, dead, suppressed) or goes back to pending."""

    __slots__ = ("head", "state", "attempts", "next_at", "error", "status", "done")

    def __init__(
        self,
        head: Head,
        state: str,
        attempts: Optional[int],
        next_at: Optional[float],
        error: Optional[str],
        status: Optional[int],
        done: Optional[Done],
    ) -> None:
        self.head, self.state, self.attempts, self.next_at = head, state, attempts, next_at
        self.error, self.status, self.done = error, status, done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> Any:
        h = self.head
        now = box._clock()
        with box._lock:
            claimed = box._busy.get((h.target, h.key)) == h.seq
        if not claimed:
            # A duplicate or late finish: the row was finished already and its key may be
            # claimed by the next row. Changing anything now could resurrect a delivered row.
            return _STALE
        # 'pending' too: the claim's 'inflight' mark may have failed to commit.
        where = " WHERE seq = ? AND state IN ('inflight', 'pending')"
        if self.state == "pending":
            changed = cur.execute(
                "UPDATE outbox SET state = 'pending', attempts = COALESCE(?, attempts), next_attempt_at = ?,"
                " last_error = ?, last_status = ?" + where,
                (self.attempts, self.next_at, self.error, self.status, h.seq),
            ).rowcount
        elif self.state == "suppressed":
            changed = cur.execute("UPDATE outbox SET state = 'suppressed', done_at = ?" + where, (now, h.seq)).rowcount
        else:
            changed = cur.execute(
                "UPDATE outbox SET state = ?, attempts = COALESCE(?, attempts), last_error = ?, last_status = ?,"
                " done_at = ?" + where,
                (self.state, self.attempts, self.error, self.status, now, h.seq),
            ).rowcount
        if not changed:
            return _STALE
        if self.state == "delivered":
            cur.execute(
                "INSERT INTO last_forwarded (target, key, level, received_at, sent_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (target, key) DO UPDATE SET level = excluded.level,"
                " received_at = excluded.received_at, sent_at = excluded.sent_at",
                (h.target, h.key, h.level, h.received_at, now),
            )
            body = cur.execute("SELECT body FROM outbox WHERE seq = ?", (h.seq,)).fetchone()[0]
            record_delivery(cur, h.target, h.key, h.level, bytes(body), h.seq, now)
        return _next_head(cur, h.target, h.key)

    def after(self, box: "Outbox", nxt: Any) -> None:
        h = self.head
        if nxt is _STALE:
            log.warning("outbox.stale_finish", target=h.target, id=h.key, seq=h.seq, state=self.state)
            return
        box._busy.pop((h.target, h.key), None)
        if self.state == "pending":
            box._bump(box._pending, h.target, 1)
        elif self.state == "dead":
            box._bump(box._dead, h.target, 1)
        elif self.state == "delivered":
            box._forwarded[(h.target, h.key)] = Forwarded(h.level, h.received_at)
        if nxt is not None:
            box._offer(nxt)


class _Rebuild(_Op):
    """Reload the index from the file: at startup, and after another process committed."""

    __slots__ = ("only_if_changed", "recover_inflight")

    def __init__(self, only_if_changed: bool, recover_inflight: bool = False) -> None:
        self.only_if_changed = only_if_changed
        self.recover_inflight = recover_inflight

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> int:
        version = cur.execute("PRAGMA data_version").fetchone()[0]
        if self.only_if_changed and version == box._data_version:
            return -1
        box._data_version = version
        recovered = 0
        if self.recover_inflight:
            recovered = cur.execute("UPDATE outbox SET state = 'pending' WHERE state = 'inflight'").rowcount
        # Everything below reads; holding the index lock keeps claims out while we swap.
        with box._lock:
            heads = [
                Head(*r)
                for r in cur.execute(
                    "SELECT o.target, o.key, o.seq, o.next_attempt_at, o.level, o.received_at FROM outbox o"
                    " WHERE o.seq IN (SELECT MIN(seq) FROM outbox WHERE state = 'pending' GROUP BY target, key)"
                )
            ]
            pending: Dict[str, int] = {}
            dead: Dict[str, int] = {}
            for target, state, count in cur.execute(
                "SELECT target, state, count(*) FROM outbox WHERE state IN ('pending', 'dead') GROUP BY target, state"
            ):
                (pending if state == "pending" else dead)[target] = count
            # Claimed rows whose 'inflight' mark is still queued behind us read as pending here.
            for (target, _key), seq in box._busy.items():
                state_row = cur.execute("SELECT state FROM outbox WHERE seq = ?", (seq,)).fetchone()
                if state_row is not None and state_row[0] == "pending" and pending.get(target, 0) > 0:
                    pending[target] -= 1
            box._pending, box._dead = pending, dead
            box._heads = {}
            box._heaps = {}
            box._parked = {}
            for head in heads:
                key = (head.target, head.key)
                if key in box._held:
                    box._parked[key] = head
                elif key not in box._busy:
                    box._heads[key] = head
            for head in box._heads.values():
                box._heaps.setdefault(head.target, []).append((head.due, head.seq, head.key))
            for heap in box._heaps.values():
                heapq.heapify(heap)
            box._forwarded = {
                (t, k): Forwarded(level, received)
                for t, k, level, received in cur.execute(
                    "SELECT target, key, level, received_at FROM last_forwarded"
                )
            }
            box._has_expiries = cur.execute("SELECT 1 FROM expiry LIMIT 1").fetchone() is not None
        return recovered


class _Replay(_Op):
    __slots__ = ("target", "key", "done")

    def __init__(self, target: Optional[str], key: Optional[str], done: Optional[Done]) -> None:
        self.target, self.key, self.done = target, key, done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> int:
        count = _replay(cur, self.target, self.key, box._clock())
        if count:
            _Rebuild(only_if_changed=False).apply(box, cur)
        return count


class _FireExpiries(_Op):
    """Turn due auto-resolve timers into synthetic OK rows, atomically with deleting them."""

    __slots__ = ("make", "done", "inserted")

    def __init__(self, make: MakeResolve, done: Optional[Done]) -> None:
        self.make, self.done = make, done
        self.inserted: List[_Insert] = []

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> List[Tuple[int, str, str]]:
        now = box._clock()
        self.inserted = []
        due = cur.execute(
            "SELECT target, key, body FROM expiry WHERE due_at <= ? ORDER BY due_at LIMIT 500", (now,)
        ).fetchall()
        fired: List[Tuple[int, str, str]] = []
        for target, key, body in due:
            cur.execute("DELETE FROM expiry WHERE target = ? AND key = ?", (target, key))
            resolved = self.make(target, key, bytes(body), now)
            if resolved is None:
                continue
            ins = _Insert(target, key, "OK", resolved, now, None, None, synthetic=True)
            seq = ins.apply(box, cur)
            self.inserted.append(ins)
            fired.append((seq, target, key))
        return fired

    def after(self, box: "Outbox", fired: List[Tuple[int, str, str]]) -> None:
        for ins, (seq, _t, _k) in zip(self.inserted, fired):
            ins.after(box, seq)


class _Prune(_Op):
    """Forget old delivered/suppressed rows and stale repeat-suppression entries."""

    __slots__ = ("keep", "forget_before", "done")

    def __init__(self, keep: int, forget_before: Optional[float], done: Optional[Done]) -> None:
        self.keep, self.forget_before, self.done = keep, forget_before, done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> Tuple[int, List[Key]]:
        removed = 0
        for state in ("delivered", "suppressed"):
            removed += cur.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE state = ?"
                " ORDER BY seq DESC LIMIT ? OFFSET ?)",
                (state, _PRUNE_CHUNK, self.keep),
            ).rowcount
        forgotten: List[Key] = []
        if self.forget_before is not None:
            forgotten = [
                (t, k)
                for t, k in cur.execute(
                    "SELECT target, key FROM last_forwarded WHERE received_at < ? LIMIT ?",
                    (self.forget_before, _PRUNE_CHUNK),
                )
            ]
            cur.executemany("DELETE FROM last_forwarded WHERE target = ? AND key = ?", forgotten)
        return removed, forgotten

    def after(self, box: "Outbox", result: Tuple[int, List[Key]]) -> None:
        for key in result[1]:
            box._forwarded.pop(key, None)


class _Probe(_Op):
    __slots__ = ("done",)

    def __init__(self, done: Optional[Done]) -> None:
        self.done = done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> bool:
        cur.execute(
            "INSERT INTO meta (name, value) VALUES ('probe', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (repr(box._clock()),),
        )
        return True


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


class Outbox:
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
        self._clock = clock
        self._on_change = on_change
        self.commit_timeout = commit_timeout
        self._lock = threading.Lock()
        self._heads: Dict[Key, Head] = {}
        self._heaps: Dict[str, List[Tuple[float, int, str]]] = {}
        self._busy: Dict[Key, int] = {}
        #: Idle keys held by :meth:`hold`; their heads wait in ``_parked`` until release.
        self._held: Set[Key] = set()
        self._parked: Dict[Key, Head] = {}
        self._pending: Dict[str, int] = {}
        self._dead: Dict[str, int] = {}
        self._forwarded: Dict[Key, Forwarded] = {}
        self._has_expiries = False
        self._data_version = -1
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._writer: Optional[threading.Thread] = None
        self._conn: Optional[sqlite3.Connection] = None
        self._readers: List[sqlite3.Connection] = []
        self._local = threading.local()
        self._closed = True
        self._writable = True
        self._last_error: Optional[str] = None
        self.recovered_inflight = 0

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> "Outbox":
        """Open the file, put crash-orphaned inflight rows back to pending, build the index."""
        conn = open_store(self.path, create=True)
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
            raise _store_error(self.path, exc, "recovery") from None
        self._conn = conn
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._writer.start()
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
        stop = False
        while not stop:
            op = self._queue.get()
            if op is _STOP:
                break
            batch = [op]
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
        try:
            cur.execute("BEGIN IMMEDIATE")
            results = self._apply_all(batch, cur)
            cur.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - any failure must fail the callers, not the thread
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
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
            if batch[0].done is not None:
                batch[0].done(None, error)
            return
        self._writable = True
        self._last_error = None
        with self._lock:
            for op, result in zip(batch, results):
                try:
                    op.after(self, result)
                except Exception:  # noqa: BLE001 - the writer thread must outlive a bug
                    log.error("outbox.index_error", op=type(op).__name__, exc_info=True)
        for op, result in zip(batch, results):
            if op.done is not None:
                try:
                    op.done(result, None)
                except Exception:  # noqa: BLE001
                    log.error("outbox.callback_error", op=type(op).__name__, exc_info=True)
        self._on_change()

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
        op.done = _resolver(future)
        self._submit(op)
        return future.result(timeout if timeout is not None else self.commit_timeout)

    # -- index helpers (called with self._lock held) -----------------------------

    @staticmethod
    def _bump(counts: Dict[str, int], target: str, delta: int) -> None:
        counts[target] = counts.get(target, 0) + delta

    def _offer(self, head: Head) -> None:
        key = (head.target, head.key)
        if key in self._busy:
            return
        if key in self._held:
            parked = self._parked.get(key)
            if parked is None or head.seq < parked.seq:
                self._parked[key] = head
            return
        current = self._heads.get(key)
        if current is not None and current.seq <= head.seq:
            return
        self._heads[key] = head
        heapq.heappush(self._heaps.setdefault(head.target, []), (head.due, head.seq, head.key))

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
    ) -> None:
        """Queue an insert; ``done(seq, None)`` runs (in the writer thread) once it is durable,
        ``done(None, StoreError)`` if it could not be committed. ``synthetic`` marks events
        the bridge made itself (auto-resolve, reconcile)."""
        now = self._clock() if received_at is None else received_at
        expire_at = None if expire_after is None else now + expire_after
        self._submit(_Insert(target, key, level, body, now, expire_at, done, synthetic=synthetic))

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
            _resolver(future),
            target,
            key,
            level,
            body,
            expire_after=expire_after,
            received_at=received_at,
            synthetic=synthetic,
        )
        return future

    # -- dispatching -------------------------------------------------------------

    def peek(self, target: str, now: float) -> Tuple[Optional[Head], Optional[float]]:
        """The ready head of ``target`` with the earliest due time, or the next due time."""
        with self._lock:
            heap = self._heaps.get(target)
            while heap:
                due, seq, key = heap[0]
                head = self._heads.get((target, key))
                if head is None or head.seq != seq or head.due != due:
                    heapq.heappop(heap)
                    continue
                if due <= now:
                    return head, None
                return None, due
            return None, None

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
        wait: bool = True,
    ) -> None:
        """Record the outcome of a claimed row: delivered, dead, suppressed, silenced (held by
        a silence, see :mod:`bridge.silences`), or pending again (with ``attempts`` and
        ``next_at`` so a restart resumes the schedule)."""
        if state not in ("delivered", "dead", "suppressed", "silenced", "pending"):
            raise ValueError(f"bad final state {state!r}")
        if state == "pending" and next_at is None:
            raise ValueError("a retry needs next_at")
        op = _Finish(head, state, attempts, next_at, error, status, None)
        if wait:
            self._run_sync(op)
        else:
            self._submit(op)

    def forwarded(self, target: str, key: str) -> Optional[Forwarded]:
        """The last delivered event for this key, if still remembered."""
        with self._lock:
            return self._forwarded.get((target, key))

    # -- the incident ledger -------------------------------------------------------

    def incidents(self, target: Optional[str] = None) -> List[Incident]:
        """Open incidents (what the platforms believe is firing), read from the file."""
        return open_incidents(self._reader(), target)

    def told(self, target: str, key: str) -> Optional[Incident]:
        """The open incident of ``key`` on ``target``, or None if the platform believes it is OK."""
        return _told(self._reader(), target, key)

    def idle(self, target: str, key: str) -> bool:
        """No pending or in-flight row for the key, and not held: nothing will tell the
        platform about it unless someone enqueues. Reconcile and keep-alive act only on these."""
        k = (target, key)
        with self._lock:
            return k not in self._heads and k not in self._busy and k not in self._held

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

    def load(self, seq: int) -> Optional[Row]:
        """Read one row (body included) on this thread's read connection."""
        found = self._reader().execute(f"SELECT {_ROW_COLUMNS} FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return None if found is None else _row(found)

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

    def replay(self, target: Optional[str] = None, key: Optional[str] = None) -> int:
        """Dead letters back to pending (fresh attempts and age); returns how many."""
        return int(self._run_sync(_Replay(target, key, None)))

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

    # -- statistics ------------------------------------------------------------------

    def stats(self) -> Stats:
        """Queue depth from the index, the oldest pending age from the file."""
        with self._lock:
            pending = {t: n for t, n in self._pending.items() if n}
            dead = {t: n for t, n in self._dead.items() if n}
            inflight: Dict[str, int] = {}
            for target, _key in self._busy:
                inflight[target] = inflight.get(target, 0) + 1
        oldest: Optional[float] = None
        if pending or inflight:
            try:
                oldest = self._oldest_received()
            except sqlite3.Error:
                oldest = None
        age = None if oldest is None else max(0.0, self._clock() - oldest)
        return Stats(pending, inflight, dead, age, self._writable, self._last_error)

    def _oldest_received(self) -> Optional[float]:
        reader = self._reader()
        best: Optional[float] = None
        for state in ("pending", "inflight"):
            found = reader.execute(
                "SELECT received_at FROM outbox WHERE state = ? ORDER BY seq LIMIT 1", (state,)
            ).fetchone()
            if found is not None and (best is None or found[0] < best):
                best = found[0]
        return best

    def targets_with_rows(self) -> Set[str]:
        """Targets that have pending or dead rows (to spot rows for removed targets)."""
        with self._lock:
            return {t for t, n in self._pending.items() if n} | {t for t, n in self._dead.items() if n}

    def _reader(self) -> sqlite3.Connection:
        conn: Optional[sqlite3.Connection] = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc, "open reader") from None
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn


def _resolver(future: "Future[Any]") -> Done:
    def done(result: Any, error: Optional[BaseException]) -> None:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    return done
