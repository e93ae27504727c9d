"""The operations the outbox's writer thread applies, one transaction per batch.

Each operation's ``apply`` runs inside the writer's transaction and returns a
result; ``after`` runs once that transaction has committed, with the index
lock held, and brings :class:`bridge.outbox.Outbox`'s in-memory index in line
with the file. Nothing here touches the index before the change is durable.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future
import sqlite3
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from .ledger import record_delivery
from .log import get_logger
from .outbox_index import Key
from .store import Forwarded, Head

if TYPE_CHECKING:
    from .outbox import Outbox

log = get_logger("bridge.outbox")
#: Most operations folded into one transaction; bounds commit latency under a flood.
MAX_BATCH = 2000

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
