"""Silences on PostgreSQL (schema 3: ``oncall_silences``; held rows are ``silenced``).

Functions over a cursor inside the caller's transaction, shared by the serving replicas
(:class:`bridge.pg.PgOutbox`) and the ``silence`` command. The rules are
:mod:`bridge.silences`'; the release applies them under the same locks as inserts and
claims: a key's queue row is locked first (keys in sorted order, so two transactions
never deadlock), then its silenced rows are re-read, so a row finished ``silenced`` by
another replica meanwhile is never skipped. A ``NOTIFY`` wakes every replica's
dispatcher for what went back to pending, and tells them to re-read the silences.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, FrozenSet, Iterator, List, Optional, Tuple

import psycopg

from ..silences import (
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
from . import sql
from .rows import _store_error

__all__ = ["CHANNEL", "FINISH_SILENCED", "Mark", "expire", "held_mark", "held_rows", "insert", "list_silences", "release", "silence_store"]

#: NOTIFY channel: silences changed (replicas re-read them at once instead of within a second).
CHANNEL = "oncall_silences"
#: A claimed row a silence holds: kept on file, the key freed for its next row (as on SQLite).
FINISH_SILENCED = "UPDATE oncall_outbox SET state = 'silenced', done_at = %s WHERE seq = %s AND state = 'inflight'"
#: Ids released per pass (one transaction); the rest go on the next pass a second later.
MAX_RELEASE = 500


def list_silences(cur: "psycopg.Cursor[Any]", *, include_ended: bool = False,
                  now: Optional[float] = None) -> List[Silence]:
    """Silences on file, ending soonest first; by default only those not ended or expired."""
    now = time.time() if now is None else now
    if include_ended:
        rows = cur.execute(f"SELECT {COLUMNS} FROM oncall_silences ORDER BY ends_at, id").fetchall()
    else:
        rows = cur.execute(
            f"SELECT {COLUMNS} FROM oncall_silences WHERE expired_at IS NULL AND ends_at > %s ORDER BY ends_at, id",
            (now,),
        ).fetchall()
    return [decode(r) for r in rows]


def insert(cur: "psycopg.Cursor[Any]", silence: Silence) -> Silence:
    """Store a silence made by :func:`bridge.silences.new_silence` and tell the replicas."""
    cur.execute(
        f"INSERT INTO oncall_silences ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, NULL)",
        (silence.id, encode_matchers(silence.matchers), silence.starts_at, silence.ends_at,
         silence.comment, silence.created_by, silence.created_at),
    )
    cur.execute(f"NOTIFY {CHANNEL}")
    return silence


def expire(cur: "psycopg.Cursor[Any]", silence_id: str, now: Optional[float] = None) -> Silence:
    """End a silence now (kept, marked expired; the row locked so two expiries cannot both win)."""
    now = time.time() if now is None else now
    row = cur.execute(f"SELECT {COLUMNS} FROM oncall_silences WHERE id = %s FOR UPDATE", (silence_id,)).fetchone()
    check_expirable(None if row is None else decode(row), silence_id, now)
    found = cur.execute(
        f"UPDATE oncall_silences SET expired_at = %s WHERE id = %s RETURNING {COLUMNS}", (now, silence_id)
    ).fetchone()
    assert found is not None
    cur.execute(f"NOTIFY {CHANNEL}")
    return decode(found)


def held_rows(cur: "psycopg.Cursor[Any]", limit: Optional[int] = None) -> List[Held]:
    """Silenced rows, newest first (``limit`` bounds a read for the page)."""
    query = "SELECT seq, target, key, level, body FROM oncall_outbox WHERE state = 'silenced' ORDER BY seq DESC"
    rows = cur.execute(query + (" LIMIT %s" if limit else ""), (limit,) if limit else ()).fetchall()
    return [Held(int(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4])) for r in rows]


_NEWEST_OF_KEY = (
    "SELECT seq, level, body FROM oncall_outbox WHERE target = %s AND key = %s AND state = 'silenced'"
    " ORDER BY seq DESC LIMIT 1"
)
_NEWER_QUEUED = (
    "SELECT 1 FROM oncall_outbox WHERE target = %s AND key = %s AND seq > %s AND state IN ('pending', 'inflight')"
    " LIMIT 1"
)
_TOLD_OPEN = "SELECT open FROM oncall_ledger WHERE target = %s AND key = %s"
_SUPERSEDE = (
    "UPDATE oncall_outbox SET state = 'superseded', done_at = %s"
    " WHERE target = %s AND key = %s AND state = 'silenced' AND seq <> %s"
)
_TO_PENDING = (
    "UPDATE oncall_outbox SET state = 'pending', attempts = 0, next_attempt_at = %s, queued_at = %s,"
    " done_at = NULL, last_error = NULL, last_status = NULL WHERE seq = %s AND state = 'silenced'"
)
_INFLIGHT = "SELECT inflight_seq FROM oncall_queue WHERE target = %s AND key = %s"


#: What a release pass depends on: the silenced rows (count, sum of seqs) and the active silences.
Mark = Tuple[int, int, int, FrozenSet[str]]


def held_mark(cur: "psycopg.Cursor[Any]", now: float) -> Mark:
    """A cheap fingerprint of what a release would look at (no bodies read): while it stays the
    same after a pass that released nothing, the next pass would release nothing either. The
    targets count too: ``move`` (while replicas serve) changes a held row's target, which
    matchers may test, and nothing else."""
    found = cur.execute(
        "SELECT count(*), COALESCE(sum(seq), 0), COALESCE(sum(hashtext(target)), 0) FROM oncall_outbox"
        " WHERE state = 'silenced'"
    ).fetchone()
    assert found is not None
    active = frozenset(s.id for s in list_silences(cur, now=now) if s.active(now))
    return int(found[0]), int(found[1]), int(found[2]), active


def release(cur: "psycopg.Cursor[Any]", now: Optional[float] = None) -> List[Released]:
    """Release every id whose newest silenced row no active silence matches any more (at most
    :data:`MAX_RELEASE` per call). The caller holds the ``silences`` singleton job."""
    now = time.time() if now is None else now
    candidates = cur.execute(
        "SELECT DISTINCT ON (target, key) seq, target, key, level, body FROM oncall_outbox"
        " WHERE state = 'silenced' ORDER BY target, key, seq DESC"
    ).fetchall()
    if not candidates:
        return []
    active = [s for s in list_silences(cur, now=now) if s.active(now)]
    newest = newest_per_id(Held(int(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4])) for r in candidates)
    released: List[Released] = []
    for held in releasable(newest, active)[:MAX_RELEASE]:
        cur.execute(sql.LOCK_QUEUE, (held.target, held.key))
        found = cur.execute(_NEWEST_OF_KEY, (held.target, held.key)).fetchone()
        if found is None or int(found[0]) != held.seq:
            continue  # another row of the key was silenced meanwhile: judged on the next pass
        newer = cur.execute(_NEWER_QUEUED, (held.target, held.key, held.seq)).fetchone() is not None
        told = cur.execute(_TOLD_OPEN, (held.target, held.key)).fetchone()
        send = should_send(held.level, newer_queued=newer, told_open=bool(told and told[0]))
        cur.execute(_SUPERSEDE, (now, held.target, held.key, held.seq if send else -1))
        if send:
            cur.execute(_TO_PENDING, (now, now, held.seq))
            inflight = cur.execute(_INFLIGHT, (held.target, held.key)).fetchone()
            if inflight is None or inflight[0] is None:
                cur.execute(sql.REFRESH, (held.target, held.key))
        released.append((held.target, held.key, "sent" if send else "dropped"))
    if any(outcome == "sent" for _t, _k, outcome in released):
        cur.execute("NOTIFY oncall_enqueue")
    return released


class _CommandStore:
    """The silences of the shared database on a connection of a command's own (each change
    commits at once and tells the replicas)."""

    def __init__(self, conn: "psycopg.Connection[Any]") -> None:
        self.conn = conn

    def list_silences(self, *, include_ended: bool = False, now: Optional[float] = None) -> List[Silence]:
        with self.conn.transaction():
            return list_silences(self.conn.cursor(), include_ended=include_ended, now=now)

    def add_silence(self, silence: Silence) -> Silence:
        with self.conn.transaction():
            return insert(self.conn.cursor(), silence)

    def expire_silence(self, silence_id: str, now: Optional[float] = None) -> Silence:
        with self.conn.transaction():
            return expire(self.conn.cursor(), silence_id, now)


@contextlib.contextmanager
def silence_store(dsn: str) -> Iterator[_CommandStore]:
    """For the ``silence`` command (schema checked, never migrated): errors become StoreError."""
    from .admin import open_admin

    conn = open_admin(dsn)
    try:
        yield _CommandStore(conn)
    except psycopg.Error as exc:
        raise _store_error(exc, "silence command") from None
    finally:
        conn.close()
