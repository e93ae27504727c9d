"""The operations the outbox's writer thread applies, one transaction per batch.

Each operation's ``apply`` runs inside the writer's transaction and returns a
result; ``after`` runs once that transaction has committed, with the index
lock held, and brings :class:`bridge.outbox.Outbox`'s in-memory index in line
with the file. Nothing here touches the index before the change is durable.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future
import heapq
import sqlite3
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from .coalesce import keep
from .ledger import CLOSED_KEEP, last_told, record_delivery
from .log import get_logger
from .outbox_index import Key
from .store import Forwarded, Head
from .store_ops import Replayed, replay_rows

if TYPE_CHECKING:
    from .outbox import Outbox

log = get_logger("bridge.outbox")
#: Most operations folded into one transaction; bounds commit latency under a flood.
MAX_BATCH = 2000
_PRUNE_CHUNK = 5000

#: What a finish of a row that is no longer claimed returns: nothing was changed.
_STALE = object()
Done = Callable[[Any, Optional[BaseException]], None]


def resolver(future: "Future[Any]") -> Done:
    """A :data:`Done` callback that settles ``future`` (both stores' ``enqueue``)."""

    def done(result: Any, error: Optional[BaseException]) -> None:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    return done
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

    def seal(self) -> bool:
        """Called with the write lock held, before ``apply``: False drops the op unapplied."""
        return True

    def unseal(self) -> None:
        """The transaction that sealed the op rolled back."""


class Ticket(Protocol):
    """What :meth:`bridge.outbox.Outbox.enqueue_with` returns: a handle on the queued insert."""

    def withdraw(self) -> bool:
        """True: the row will never be committed. False: a commit of it is under way."""


#: Guards the queued -> sealed -> withdrawn phases of every insert (one lock: a phase
#: change is a few instructions, and the writer seals a whole batch in one acquire).
SEAL_LOCK = threading.Lock()
_QUEUED, _SEALED, _WITHDRAWN = 0, 1, 2


class _Insert(_Op):
    """An accepted alert on its way to the file. Until the writer holds the write lock and
    seals it, the accepting side may withdraw it: then it is never committed, so a
    "NOT stored" answer is the truth (issue 12 item 5)."""

    __slots__ = ("target", "key", "level", "body", "received_at", "expire_at", "synthetic", "done", "phase",
                 "also", "seqs")

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
        also: Sequence[str] = (),
    ) -> None:
        self.target, self.key, self.level, self.body = target, key, level, body
        self.received_at, self.expire_at, self.done, self.synthetic = received_at, expire_at, done, synthetic
        #: More targets that get the same event in the same transaction (an HA fan-out's members).
        self.also = tuple(also)
        #: The seq of each of ``(target, *also)``'s rows, set by the transaction that inserts them.
        self.seqs: List[int] = []
        self.phase = _QUEUED

    def seal(self) -> bool:
        if self.phase == _WITHDRAWN:
            return False
        self.phase = _SEALED
        return True

    def unseal(self) -> None:
        if self.phase == _SEALED:
            self.phase = _QUEUED

    def withdraw(self) -> bool:
        """True if the row will never be committed; False if a commit of it is under way
        (its outcome then arrives through ``done``)."""
        with SEAL_LOCK:
            if self.phase == _SEALED:
                return False
            self.phase = _WITHDRAWN
            return True

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> int:
        return _insert_rows(box, cur, [self])[0]

    def after(self, box: "Outbox", seq: int) -> None:
        for target, row_seq in zip((self.target, *self.also), self.seqs):
            box._bump(box._pending, target, 1)
            k = (target, self.key)
            if k in box._heads or k in box._parked:
                box._coalescible.setdefault(target, set()).add(self.key)
            box._offer(Head(target, self.key, row_seq, self.received_at, self.level, self.received_at))


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
    """Insert a run of rows with one statement per chunk; an op with ``also`` targets is one row
    per target, all in this transaction. Returns each op's first seq (all of them in ``op.seqs``).

    Each ``execute`` releases and re-takes the GIL; one per row would make the
    writer queue behind the event loop thread for every row (the convoy effect).
    With the write lock held, AUTOINCREMENT hands out consecutive seqs, so the
    chunk's seqs end at ``lastrowid``.
    """
    rows = [(target, op) for op in ops for target in (op.target, *op.also)]
    seqs: List[int] = []
    start = 0
    for size in _chunks(len(rows)):
        params: List[Any] = []
        for target, op in rows[start : start + size]:
            params += (target, op.key, op.level, op.body, op.received_at, op.received_at,
                       op.received_at, int(op.synthetic))
        cur.execute(_insert_sql(size), params)
        last = int(cur.lastrowid)  # type: ignore[arg-type]
        seqs.extend(range(last - size + 1, last + 1))
        start += size
    firsts: List[int] = []
    at = 0
    for op in ops:
        op.seqs = seqs[at : at + 1 + len(op.also)]
        firsts.append(op.seqs[0])
        at += len(op.seqs)
    # The last event of a key decides its auto-resolve timer.
    final: Dict[Key, "_Insert"] = {}
    for target, op in rows:
        final[(target, op.key)] = op
    upserts = [(t, k, op.expire_at, op.body) for (t, k), op in final.items() if op.expire_at is not None]
    if upserts:
        cur.executemany(_UPSERT_EXPIRY, upserts)
    if box._has_expiries:
        deletes = [k for k, op in final.items() if op.expire_at is None]
        if deletes:
            cur.executemany(_DELETE_EXPIRY, deletes)
    if upserts:
        box._has_expiries = True
    return firsts


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


def _next_head(cur: sqlite3.Cursor, target: str, key: str) -> Optional[Tuple[Head, bool]]:
    """The key's new head, and whether more rows wait behind it (then it may coalesce)."""
    found = cur.execute(
        "SELECT seq, next_attempt_at, level, received_at FROM outbox"
        " WHERE target = ? AND key = ? AND state = 'pending' ORDER BY seq LIMIT 2",
        (target, key),
    ).fetchall()
    if not found:
        return None
    first = found[0]
    return Head(target, key, first[0], first[1], first[2], first[3]), len(found) > 1


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
            head, more = nxt
            if more:
                box._coalescible.setdefault(h.target, set()).add(h.key)
            box._offer(head)


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
            box._ok_heaps = {}
            for head in box._heads.values():
                box._heaps.setdefault(head.target, []).append((head.due, head.seq, head.key))
                if head.level == "OK":
                    box._ok_heaps.setdefault(head.target, []).append((head.due, head.seq, head.key))
            for heap in list(box._heaps.values()) + list(box._ok_heaps.values()):
                heapq.heapify(heap)
            box._coalescible = {}
            for target, key in cur.execute(
                "SELECT target, key FROM outbox WHERE state = 'pending' GROUP BY target, key HAVING count(*) > 1"
            ):
                box._coalescible.setdefault(target, set()).add(key)
            box._forwarded = {
                (t, k): Forwarded(level, received)
                for t, k, level, received in cur.execute(
                    "SELECT target, key, level, received_at FROM last_forwarded"
                )
            }
            box._has_expiries = cur.execute("SELECT 1 FROM expiry LIMIT 1").fetchone() is not None
        return recovered


class _Replay(_Op):
    __slots__ = ("target", "key", "force", "done")

    def __init__(self, target: Optional[str], key: Optional[str], force: bool, done: Optional[Done]) -> None:
        self.target, self.key, self.force, self.done = target, key, force, done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> Replayed:
        result = replay_rows(cur, self.target, self.key, box._clock(), force=self.force)
        if result.count:
            _Rebuild(only_if_changed=False).apply(box, cur)
        return result


#: A timer whose resolve could not be made is tried again this much later.
EXPIRY_RETRY_SECONDS = 60.0


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
            # One timer that cannot fire (a bug rendering its resolve, a bad row) must not
            # hold back every other auto-resolve: it is put back a minute later, alone.
            cur.execute("SAVEPOINT expiry_one")
            try:
                cur.execute("DELETE FROM expiry WHERE target = ? AND key = ?", (target, key))
                resolved = self.make(target, key, bytes(body), now)
                if resolved is not None:
                    ins = _Insert(target, key, "OK", resolved, now, None, None, synthetic=True)
                    seq = ins.apply(box, cur)
                    self.inserted.append(ins)
                    fired.append((seq, target, key))
                cur.execute("RELEASE expiry_one")
            except Exception as exc:  # noqa: BLE001 - isolate the one timer
                cur.execute("ROLLBACK TO expiry_one")
                cur.execute("RELEASE expiry_one")
                cur.execute(
                    "UPDATE expiry SET due_at = ? WHERE target = ? AND key = ?",
                    (now + EXPIRY_RETRY_SECONDS, target, key),
                )
                box._count_failure("Expiry")
                log.error("outbox.expiry_failed", target=target, id=key, error=f"{type(exc).__name__}: {exc}",
                          retry_in=EXPIRY_RETRY_SECONDS)
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
        # Closed incidents past CLOSED_KEEP whose id has no dead letter left (see bridge.ledger).
        cur.execute(
            "DELETE FROM ledger WHERE rowid IN (SELECT l.rowid FROM ledger l WHERE l.open = 0 AND l.told_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.state = 'dead' AND o.target = l.target AND o.key = l.key)"
            " LIMIT ?)",
            (box._clock() - CLOSED_KEEP, _PRUNE_CHUNK),
        )
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


class _Coalesce(_Op):
    """Mark the pending events of some ids ``superseded`` per :func:`bridge.coalesce.keep`.

    The first kept row inherits the old head's retry schedule (attempts, due time), so
    a platform that is still down sees the same backoff, not a fresh burst.
    """

    __slots__ = ("target", "keys", "mode", "done")

    def __init__(self, target: str, keys: List[str], mode: str, done: Optional[Done]) -> None:
        self.target, self.keys, self.mode, self.done = target, keys, mode, done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> List[Tuple[str, Optional[Head], int]]:
        now = box._clock()
        out: List[Tuple[str, Optional[Head], int]] = []
        for key in self.keys:
            rows = cur.execute(
                "SELECT seq, level, attempts, next_attempt_at, last_error, last_status, received_at FROM outbox"
                " WHERE target = ? AND key = ? AND state = 'pending' ORDER BY seq",
                (self.target, key),
            ).fetchall()
            told = last_told(cur.connection, self.target, key)
            kept = set(keep([(r[0], r[1]) for r in rows], None if told is None else told.level, self.mode))
            gone = [r[0] for r in rows if r[0] not in kept]
            if not gone:
                out.append((key, None, 0))
                continue
            latest = rows[-1][0]
            cur.executemany(
                "UPDATE outbox SET state = 'superseded', done_at = ?, last_error = ? WHERE seq = ? AND state = 'pending'",
                [(now, f"superseded by #{latest} (coalesced)", seq) for seq in gone],
            )
            first = next(r for r in rows if r[0] in kept)
            old = rows[0]
            due = first[3]
            if old[0] != first[0]:
                due = max(first[3], old[3])
                cur.execute(
                    "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = COALESCE(?, last_error),"
                    " last_status = COALESCE(?, last_status) WHERE seq = ?",
                    (max(first[2], old[2]), due, old[4], old[5], first[0]),
                )
            out.append((key, Head(self.target, key, first[0], due, first[1], first[6]), len(gone)))
        return out

    def after(self, box: "Outbox", result: List[Tuple[str, Optional[Head], int]]) -> None:
        for key, head, gone in result:
            k = (self.target, key)
            box._coalescible.get(self.target, set()).discard(key)
            if head is None:
                continue
            box._bump(box._pending, self.target, -gone)
            if k in box._busy:
                continue
            if k in box._held:
                box._parked[k] = head
                continue
            box._heads[k] = head
            box._push(head)
