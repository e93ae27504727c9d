"""``move`` and ``drop`` of a target's rows on the PostgreSQL store, while replicas serve.

On SQLite these commands need the bridge stopped (they hold the file's lock). A
replica set is never stopped as a whole, so here they run beside serving replicas:
the target's queue rows are locked first (in key order, like every other writer), so
no replica claims or inserts for them meanwhile, and a row some replica is
delivering right now makes the command refuse rather than pull the row from under
that attempt. Everything happens in one transaction; serving replicas are woken.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import psycopg

from ..errors import StoreError
from ..store_ops import Dropped, Moved
from .rows import _store_error

__all__ = ["drop_target", "move_target"]

_LOCK = (
    "SELECT target, key, inflight_seq, owner FROM oncall_queue WHERE target = ANY(%s)"
    " ORDER BY target, key FOR UPDATE"
)


_ENSURE_LOCKED = (
    "INSERT INTO oncall_queue AS x (target, key) SELECT %s, k FROM unnest(%s::text[]) AS k ORDER BY k"
    " ON CONFLICT (target, key) DO UPDATE SET target = x.target"
)
#: What the old name last forwarded (repeat suppression) where the new name knows nothing.
_CARRY_FORWARDED = (
    "UPDATE oncall_queue n SET fwd_level = o.fwd_level, fwd_received_at = o.fwd_received_at"
    " FROM oncall_queue o WHERE n.target = %s AND o.target = %s AND o.key = n.key AND n.fwd_level IS NULL"
)
_REFRESH_IDLE = (
    "SELECT oncall_refresh(target, key) FROM oncall_queue"
    " WHERE target = %s AND key = ANY(%s) AND inflight_seq IS NULL"
)


def _counts(cur: "psycopg.Cursor[Any]", target: str) -> Dict[str, int]:
    return {s: int(n) for s, n in cur.execute(
        "SELECT state, count(*) FROM oncall_outbox WHERE target = %s GROUP BY state", (target,))}


def _lock_idle(cur: "psycopg.Cursor[Any]", targets: List[str], busy_target: str) -> List[Tuple[str, str]]:
    """Lock every queue row of ``targets``; refuse while a row of ``busy_target`` is in flight."""
    locked = cur.execute(_LOCK, (targets,)).fetchall()
    flying = sorted({str(owner) for t, _k, seq, owner in locked if t == busy_target and seq is not None})
    if flying:
        n = sum(1 for t, _k, seq, _o in locked if t == busy_target and seq is not None)
        raise StoreError(
            f"{n} row(s) of target {busy_target!r} are being delivered right now (replica(s) "
            f"{', '.join(flying)}); run the command again when they finish, or after their lease "
            "if that replica is gone"
        )
    return [(str(t), str(k)) for t, k, _s, _o in locked]


def move_target(conn: "psycopg.Connection[Any]", old: str, new: str) -> Moved:
    """Give every row of ``old`` to ``new`` (a renamed target), as on SQLite: seqs do not change,
    so an id queued under both names is delivered in seq order across both histories; ledger
    entries and auto-resolve timers move unless ``new`` already has one for the id."""
    if old == new:
        raise StoreError("move: --from and --to are the same target")
    try:
        with conn.transaction():
            cur = conn.cursor()
            locked = _lock_idle(cur, sorted({old, new}), old)
            keys = sorted(k for t, k in locked if t == old)
            rows = _counts(cur, old)
            # The new name's queue row of every moved key, created or locked (a replica serving
            # the new name may be inserting one right now): every key is then a merge.
            cur.execute(_ENSURE_LOCKED, (new, keys))
            cur.execute(_CARRY_FORWARDED, (new, old))
            cur.execute("UPDATE oncall_outbox SET target = %s WHERE target = %s", (new, old))
            cur.execute("DELETE FROM oncall_queue WHERE target = %s", (old,))
            # The head of each is the oldest pending row of both histories (not while in flight:
            # the outcome refreshes it).
            cur.execute(_REFRESH_IDLE, (new, keys))
            incidents = _carry(cur, "oncall_ledger", old, new)
            timers = _carry(cur, "oncall_expiry", old, new)
            cur.execute("NOTIFY oncall_enqueue")
    except psycopg.Error as exc:
        raise _store_error(exc, "move") from None
    return Moved(rows, incidents, timers)


def _carry(cur: "psycopg.Cursor[Any]", table: str, old: str, new: str) -> int:
    """Move ``table``'s rows of ``old`` to ``new`` where ``new`` has none for the key; drop the rest."""
    moved = cur.execute(
        f"UPDATE {table} x SET target = %s WHERE x.target = %s"
        f" AND NOT EXISTS (SELECT 1 FROM {table} y WHERE y.target = %s AND y.key = x.key)",
        (new, old, new),
    ).rowcount
    cur.execute(f"DELETE FROM {table} WHERE target = %s", (old,))
    return int(moved)


def drop_target(conn: "psycopg.Connection[Any]", target: str) -> Dropped:
    """Delete every row, ledger entry and timer of ``target`` (a removed target)."""
    try:
        with conn.transaction():
            cur = conn.cursor()
            _lock_idle(cur, [target], target)
            rows = _counts(cur, target)
            cur.execute("DELETE FROM oncall_outbox WHERE target = %s", (target,))
            cur.execute("DELETE FROM oncall_queue WHERE target = %s", (target,))
            incidents = cur.execute("DELETE FROM oncall_ledger WHERE target = %s AND open", (target,)).rowcount
            cur.execute("DELETE FROM oncall_ledger WHERE target = %s", (target,))
            timers = cur.execute("DELETE FROM oncall_expiry WHERE target = %s", (target,)).rowcount
    except psycopg.Error as exc:
        raise _store_error(exc, "drop") from None
    return Dropped(rows, int(incidents), int(timers))
