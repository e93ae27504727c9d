"""Outage coalescing on PostgreSQL: the plan of :func:`bridge.coalesce.keep`, applied safely
while other replicas insert, claim and coalesce the same keys.

Every key's queue row is locked first (``FOR UPDATE SKIP LOCKED``: a key another replica is
busy with is left for the next round, never waited for), and a key with a row in flight is
never touched, so the row being delivered is never superseded under its sender. The
superseded rows keep their data with state ``superseded``; the key's head is refreshed.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import psycopg

from ..coalesce import BACKLOG_AGE, keep
from . import sql

__all__ = ["coalesce_keys", "coalescible_keys"]

_Pending = Tuple[int, str, int, float, Optional[str], Optional[int]]


def coalescible_keys(cur: "psycopg.Cursor[Any]", target: str, now: float, *, limited: bool,
                     limit: int = 5000) -> List[str]:
    """Keys of ``target`` with several pending rows, nothing in flight, and a backlog (the same
    rule as :meth:`bridge.outbox_index.HeadIndex.coalescible`)."""
    rows = cur.execute(sql.COALESCIBLE, {"target": target, "now": now, "limited": limited,
                                         "backlog": BACKLOG_AGE, "limit": limit}).fetchall()
    return [str(r[0]) for r in rows]


def coalesce_keys(cur: "psycopg.Cursor[Any]", target: str, keys: Sequence[str], mode: str, now: float) -> int:
    """Inside a transaction: supersede what ``keep`` drops for ``keys``; returns rows superseded."""
    locked = [str(r[0]) for r in cur.execute(sql.LOCK_COALESCIBLE, (target, sorted(set(keys)))).fetchall()]
    if not locked:
        return 0
    pending: Dict[str, List[_Pending]] = {}
    for key, seq, level, attempts, due, error, status in cur.execute(sql.PENDING_OF_KEYS, (target, locked)):
        pending.setdefault(str(key), []).append((int(seq), str(level), int(attempts), float(due), error, status))
    told = {str(k): str(level) for k, level in cur.execute(sql.TOLD_LEVELS, (target, locked))}
    gone_seqs: List[int] = []
    gone_by: List[int] = []
    inherit: List[Tuple[int, int, float, Optional[str], Optional[int]]] = []
    changed: List[str] = []
    for key, rows in pending.items():
        kept = set(keep([(r[0], r[1]) for r in rows], told.get(key), mode))
        gone = [r[0] for r in rows if r[0] not in kept]
        if not gone:
            continue
        changed.append(key)
        latest = rows[-1][0]
        gone_seqs.extend(gone)
        gone_by.extend([latest] * len(gone))
        first = next(r for r in rows if r[0] in kept)
        old = rows[0]
        if old[0] != first[0]:
            inherit.append((first[0], max(first[2], old[2]), max(first[3], old[3]), old[4], old[5]))
    if pending:
        cur.execute(sql.COALESCED_UPTO, (list(pending), [rows[-1][0] for rows in pending.values()], target))
    if not changed:
        return 0
    cur.execute(sql.SUPERSEDE, (now, gone_seqs, gone_by))
    if inherit:
        cur.execute(sql.INHERIT, tuple(list(col) for col in zip(*inherit)))
    cur.execute(sql.REFRESH_KEYS, (target, changed))
    return len(gone_seqs)
