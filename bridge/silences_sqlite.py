"""Silences in the SQLite store (schema 3: table ``silences``; held rows are ``silenced``).

Functions over a cursor inside the caller's transaction: the serving bridge runs the
writes in its writer thread (:meth:`bridge.outbox.Outbox.transact`), the CLI on a
connection of its own. The rules are :mod:`bridge.silences`'.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import FrozenSet, Iterator, List, Optional, Tuple, Union

from .errors import StoreError

from .silences import (
    COLUMNS,
    Held,
    Released,
    Silence,
    check_expirable,
    decode,
    encode_matchers,
    newest_per_id,
    releasable,
    should_send,
)
from .store import open_store

__all__ = ["expire", "held_rows", "insert", "list_silences", "pending_release", "release", "silence_store"]

Cursor = Union[sqlite3.Cursor, sqlite3.Connection]


def list_silences(cur: Cursor, *, include_ended: bool = False, now: Optional[float] = None) -> List[Silence]:
    """Silences on file, ending soonest first; by default only those not ended or expired."""
    now = time.time() if now is None else now
    if include_ended:
        rows = cur.execute(f"SELECT {COLUMNS} FROM silences ORDER BY ends_at").fetchall()
    else:
        rows = cur.execute(
            f"SELECT {COLUMNS} FROM silences WHERE expired_at IS NULL AND ends_at > ? ORDER BY ends_at", (now,)
        ).fetchall()
    return [decode(r) for r in rows]


def insert(cur: Cursor, silence: Silence) -> Silence:
    """Store a silence made by :func:`bridge.silences.new_silence`."""
    cur.execute(
        f"INSERT INTO silences ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        (silence.id, encode_matchers(silence.matchers), silence.starts_at, silence.ends_at,
         silence.comment, silence.created_by, silence.created_at),
    )
    return silence


def _one(cur: Cursor, silence_id: str) -> Optional[Silence]:
    row = cur.execute(f"SELECT {COLUMNS} FROM silences WHERE id = ?", (silence_id,)).fetchone()
    return None if row is None else decode(row)


def expire(cur: Cursor, silence_id: str, now: Optional[float] = None) -> Silence:
    """End a silence now (kept on file, marked expired); its ids are released on the next pass."""
    now = time.time() if now is None else now
    check_expirable(_one(cur, silence_id), silence_id, now)
    cur.execute("UPDATE silences SET expired_at = ? WHERE id = ?", (now, silence_id))
    found = _one(cur, silence_id)
    assert found is not None
    return found


def held_rows(cur: Cursor, limit: Optional[int] = None) -> List[Held]:
    """Silenced rows, newest first (``limit`` bounds a read for the page)."""
    query = "SELECT seq, target, key, level, body FROM outbox WHERE state = 'silenced' ORDER BY seq DESC"
    rows = cur.execute(query + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
    return [Held(int(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4])) for r in rows]


#: See :func:`held_mark`.
Mark = Tuple[int, int, FrozenSet[str]]


def held_mark(cur: Cursor, now: float) -> Mark:
    """A cheap fingerprint of what a release would look at (no bodies read): while it stays the
    same after a check that found nothing, the next check would find nothing either."""
    found = cur.execute("SELECT count(*), COALESCE(sum(seq), 0) FROM outbox WHERE state = 'silenced'").fetchone()
    active = frozenset(s.id for s in list_silences(cur, now=now) if s.active(now))
    return int(found[0]), int(found[1]), active


def pending_release(cur: Cursor, now: float) -> bool:
    """Read-only pre-check: is there an id whose newest silenced row no silence matches?
    (So a bridge with nothing to release never takes the write lock.)"""
    active = [s for s in list_silences(cur, now=now) if s.active(now)]
    return bool(releasable(newest_per_id(held_rows(cur)), active))


def _told_open(cur: sqlite3.Cursor, target: str, key: str) -> bool:
    """Whether the platform believes ``key`` is firing (the incident ledger)."""
    row = cur.execute("SELECT open FROM ledger WHERE target = ? AND key = ?", (target, key)).fetchone()
    return bool(row and row[0])


def release(cur: sqlite3.Cursor, now: Optional[float] = None) -> List[Released]:
    """Release every id whose newest silenced row no active silence matches any more.

    Run inside the writer's transaction (:meth:`bridge.outbox.Outbox.transact`) so the
    index reloads with it."""
    now = time.time() if now is None else now
    active = [s for s in list_silences(cur, now=now) if s.active(now)]
    released: List[Released] = []
    for held in releasable(newest_per_id(held_rows(cur)), active):
        later = cur.execute(
            "SELECT 1 FROM outbox WHERE target = ? AND key = ? AND seq > ? AND state IN ('pending','inflight')",
            (held.target, held.key, held.seq),
        ).fetchone()
        send = should_send(held.level, newer_queued=later is not None,
                           told_open=_told_open(cur, held.target, held.key))
        cur.execute(
            "UPDATE outbox SET state = 'superseded', done_at = ? WHERE target = ? AND key = ? AND state = 'silenced'"
            " AND seq != ?",
            (now, held.target, held.key, held.seq if send else -1),
        )
        if send:
            cur.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, queued_at = ?,"
                " done_at = NULL, last_error = NULL, last_status = NULL WHERE seq = ?",
                (now, now, held.seq),
            )
        released.append((held.target, held.key, "sent" if send else "dropped"))
    return released


class _CommandStore:
    """The silences of a store file on a connection of a command's own (autocommit: each
    change is one statement; a serving bridge re-reads within a second)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def list_silences(self, *, include_ended: bool = False, now: Optional[float] = None) -> List[Silence]:
        return list_silences(self.conn, include_ended=include_ended, now=now)

    def add_silence(self, silence: Silence) -> Silence:
        return insert(self.conn, silence)

    def expire_silence(self, silence_id: str, now: Optional[float] = None) -> Silence:
        return expire(self.conn, silence_id, now)


@contextlib.contextmanager
def silence_store(path: str, *, create: bool = False) -> Iterator[_CommandStore]:
    """For the ``silence`` command: store errors become :class:`~bridge.errors.StoreError`."""
    conn = open_store(path, create=create)
    try:
        yield _CommandStore(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"store {path}: silence command failed ({exc})") from None
    finally:
        conn.close()
