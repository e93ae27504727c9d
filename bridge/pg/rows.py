"""Values and small helpers of the PostgreSQL store: queued inserts, the dedup key, claimed
rows, error mapping, and replay (shared by the running store and the ``replay`` command)."""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

import psycopg

from ..errors import StoreError
from ..store import Forwarded, Head, Row
from ..store_ops import Forced, Replayed, Superseded
from ..store_ops import _effect as replay_effect
from . import sql

Done = Callable[[Any, Optional[BaseException]], None]


_PHASE_LOCK = threading.Lock()
_QUEUED, _SEALED, _WITHDRAWN = 0, 1, 2


class _Insert:
    """An accepted alert on its way to the database; withdrawable until the writer seals it
    (as on SQLite: a "NOT stored" answer must stay true)."""

    __slots__ = ("target", "key", "level", "body", "now", "expire_at", "synthetic", "done", "phase", "also")

    def __init__(self, target: str, key: str, level: str, body: bytes, now: float, expire_at: Optional[float],
                 synthetic: bool, done: Done, also: Sequence[str] = ()) -> None:
        self.target, self.key, self.level, self.body = target, key, level, body
        self.now, self.expire_at, self.synthetic, self.done = now, expire_at, synthetic, done
        #: More targets that get the same event in the same statement (an HA fan-out's members).
        self.also = tuple(also)
        self.phase = _QUEUED

    def withdraw(self) -> bool:
        """True: the row will never be committed. False: a commit of it is under way."""
        with _PHASE_LOCK:
            if self.phase == _QUEUED:
                self.phase = _WITHDRAWN
            return self.phase == _WITHDRAWN

    def seal(self) -> bool:
        """Called by the writer just before its transaction; False: withdrawn, skip it."""
        with _PHASE_LOCK:
            if self.phase == _QUEUED:
                self.phase = _SEALED
            return self.phase == _SEALED

    def params(self) -> List[Tuple[Any, ...]]:
        """One row per target: ``oncall_enqueue_many``'s columns."""
        return [(t, self.key, self.level, self.body, self.now, self.expire_at, self.synthetic,
                 None if self.synthetic else dedup_key(t, self.key, self.level, self.body))
                for t in (self.target, *self.also)]


def dedup_key(target: str, key: str, level: str, body: bytes) -> bytes:
    """Identity of an event across replicas: Kapacitor posts the same bytes to each endpoint."""
    h = hashlib.sha256()
    for part in (target.encode(), key.encode(), level.encode(), hashlib.sha256(body).digest()):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def _bookkeeping_commits(conn: "psycopg.Connection[Any]") -> None:
    """New pool connections commit without waiting for the WAL flush unless a transaction
    asks for it (``_tx(durable=True)``): a claim lost in a database crash is delivered once
    more, never lost; an accepted alert and an outcome always wait for the flush."""
    conn.execute("SET synchronous_commit = off")
    conn.commit()


def replay_rows(
    cur: "psycopg.Cursor[Any]", target: Optional[str], key: Optional[str], now: float, *, force: bool = False
) -> Replayed:
    """Inside a transaction: dead rows back to pending, order-safe as on SQLite
    (:func:`bridge.store_ops.replay_rows`): a dead letter that a later event of its id
    supersedes (queued, in flight, delivered, or remembered by the ledger) stays dead and is
    reported. Queue rows are locked first and heads refreshed. With ``force`` such a dead letter
    is queued again *after* the newer events: a copy with a new seq and no dedup key (like the
    bridge's own synthetic rows: the copy is meant to repeat an event already stored), the old
    row becomes ``superseded`` and the effect on the platform is reported."""
    cond, args = "o.state = 'dead'", []
    if target is not None:
        cond += " AND o.target = %s"
        args.append(target)
    if key is not None:
        cond += " AND o.key = %s"
        args.append(key)
    rows = [sql.to_row(r) for r in cur.execute(f"SELECT {sql.ROW_COLUMNS} FROM oncall_outbox o WHERE {cond}"
                                               " ORDER BY o.seq", args).fetchall()]
    for t, k in sorted({(r.target, r.key) for r in rows}):
        cur.execute(sql.LOCK_QUEUE, (t, k))
    requeued: List[Row] = []
    superseded: List[Superseded] = []
    forced: List[Forced] = []
    for row in rows:
        later = _later(cur, row)
        if later is not None and force:
            forced.append(_force(cur, row, later[2], now))
            continue
        if later is not None:
            superseded.append(Superseded(row, *later))
            continue
        cur.execute(
            "UPDATE oncall_outbox SET state = 'pending', attempts = 0, next_attempt_at = %s, queued_at = %s,"
            " done_at = NULL WHERE seq = %s", (now, now, row.seq))
        requeued.append(row)
    for t, k in sorted({(r.target, r.key) for r in requeued} | {(f.row.target, f.row.key) for f in forced}):
        found = cur.execute("SELECT inflight_seq FROM oncall_queue WHERE target = %s AND key = %s", (t, k)).fetchone()
        if found is None or found[0] is None:
            cur.execute(sql.REFRESH, (t, k))
    return Replayed(tuple(requeued), tuple(superseded), tuple(forced))


def _force(cur: "psycopg.Cursor[Any]", row: Row, later_level: str, now: float) -> Forced:
    """Queue a copy of a superseded dead letter after the newer events (its queue row is locked,
    so the copy's seq is the key's newest); the old row becomes ``superseded``."""
    told = sql.last_told(cur.connection, row.target, row.key) if cur.connection is not None else None
    found = cur.execute(
        "INSERT INTO oncall_outbox (target, key, level, body, received_at, queued_at, state, next_attempt_at,"
        " synthetic, dedup) VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s, NULL) RETURNING seq",
        (row.target, row.key, row.level, row.body, row.received_at, now, now, row.synthetic)).fetchone()
    assert found is not None
    new_seq = int(found[0])
    cur.execute("UPDATE oncall_outbox SET state = 'superseded', done_at = %s, last_error = %s WHERE seq = %s",
                (now, f"replayed with --force as #{new_seq}", row.seq))
    return Forced(row, new_seq, replay_effect(row, told, later_level))


def _later(cur: "psycopg.Cursor[Any]", row: Row) -> Optional[Tuple[int, str, str]]:
    """The newest event of the row's id after it that is not a dead letter, if any."""
    found = cur.execute(
        "SELECT seq, state, level FROM oncall_outbox WHERE target = %s AND key = %s AND seq > %s"
        " AND state <> 'dead' ORDER BY seq DESC LIMIT 1", (row.target, row.key, row.seq)).fetchone()
    if found is not None:
        return int(found[0]), str(found[1]), str(found[2])
    told = cur.execute("SELECT seq, level FROM oncall_ledger WHERE target = %s AND key = %s",
                       (row.target, row.key)).fetchone()
    if told is not None and int(told[0]) > row.seq:
        return int(told[0]), "delivered", str(told[1])
    return None


def _store_error(exc: BaseException, doing: str) -> StoreError:
    # psycopg messages name host/port/database, never the password; the DSN itself is never quoted.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"store postgres: {doing} failed: {text}")


class _Claimed:
    __slots__ = ("head", "row", "forwarded")

    def __init__(self, head: Head, row: Row, forwarded: Optional[Forwarded]) -> None:
        self.head, self.row, self.forwarded = head, row, forwarded
