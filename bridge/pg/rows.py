"""Values and small helpers of the PostgreSQL store: queued inserts, the dedup key, claimed
rows, error mapping, and replay (shared by the running store and the ``replay`` command)."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, List, Optional, Tuple

import psycopg

from ..errors import StoreError
from ..store import Forwarded, Head, Row
from . import sql

Done = Callable[[Any, Optional[BaseException]], None]


class _Insert:
    __slots__ = ("target", "key", "level", "body", "now", "expire_at", "synthetic", "done")

    def __init__(self, target: str, key: str, level: str, body: bytes, now: float, expire_at: Optional[float],
                 synthetic: bool, done: Done) -> None:
        self.target, self.key, self.level, self.body = target, key, level, body
        self.now, self.expire_at, self.synthetic, self.done = now, expire_at, synthetic, done

    def params(self) -> Tuple[Any, ...]:
        return (self.target, self.key, self.level, self.body, self.now, self.expire_at, self.synthetic,
                None if self.synthetic else dedup_key(self.target, self.key, self.level, self.body))


def dedup_key(target: str, key: str, level: str, body: bytes) -> bytes:
    """Identity of an event across replicas: Kapacitor posts the same bytes to each endpoint."""
    h = hashlib.sha256()
    for part in (target.encode(), key.encode(), level.encode(), hashlib.sha256(body).digest()):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def _bookkeeping_commits(conn: "psycopg.Connection[Any]") -> None:
    """New pool connections commit without waiting for the WAL flush unless a transaction
    asks for it (``_tx(durable=True)``): a claim or an outcome lost in a database crash is
    delivered once more, never lost; an accepted alert always waits for the flush."""
    conn.execute("SET synchronous_commit = off")
    conn.commit()


def replay_rows(cur: "psycopg.Cursor[Any]", target: Optional[str], key: Optional[str], now: float) -> int:
    """Inside a transaction: dead rows back to pending; queue rows locked first, heads refreshed."""
    cond, args = "state = 'dead'", []
    if target is not None:
        cond += " AND target = %s"
        args.append(target)
    if key is not None:
        cond += " AND key = %s"
        args.append(key)
    keys = cur.execute(f"SELECT DISTINCT target, key FROM oncall_outbox WHERE {cond} ORDER BY 1, 2", args).fetchall()
    for t, k in keys:
        cur.execute(sql.LOCK_QUEUE, (t, k))
    count = cur.execute(
        "UPDATE oncall_outbox SET state = 'pending', attempts = 0, next_attempt_at = %s, queued_at = %s,"
        f" done_at = NULL WHERE {cond}", [now, now, *args]).rowcount
    for t, k in keys:
        found = cur.execute("SELECT inflight_seq FROM oncall_queue WHERE target = %s AND key = %s", (t, k)).fetchone()
        if found is None or found[0] is None:
            cur.execute(sql.REFRESH, (t, k))
    return int(count)


def _store_error(exc: BaseException, doing: str) -> StoreError:
    # psycopg messages name host/port/database, never the password; the DSN itself is never quoted.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"store postgres: {doing} failed: {text}")


class _Claimed:
    __slots__ = ("head", "row", "forwarded")

    def __init__(self, head: Head, row: Row, forwarded: Optional[Forwarded]) -> None:
        self.head, self.row, self.forwarded = head, row, forwarded
