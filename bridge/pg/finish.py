"""A batch of outcomes in one transaction, set-based: a handful of statements per batch.

The rules are :meth:`bridge.pg.PgOutbox.finish`'s, one outcome at a time: a row whose
key is no longer ours (another replica took it after the lease) is left alone
(stale); a retry goes back to pending with its schedule; a final state records
``done_at`` and who delivered; a delivery updates the key's last-forwarded event
and the incident ledger (:func:`bridge.ledger.extend`, shared by both backends);
a silenced row is kept on file; the key's queue head is refreshed. Per outcome that was six round trips and six
statements' worth of driver CPU; here it is one statement per kind of work for the
whole batch (``executemany`` runs pipelined), which is what lets one replica's
drain follow the delivery engine.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import psycopg

from ..ledger import extend
from ..store import Outcome
from . import sql
from .silences import FINISH_SILENCED

__all__ = ["finish_rows"]

_LOCK_KEYS = (
    "SELECT q.target, q.key, q.inflight_seq, q.owner FROM oncall_queue q"
    " JOIN unnest(%s::text[], %s::text[]) AS v(target, key) ON q.target = v.target AND q.key = v.key"
    " ORDER BY q.target, q.key FOR UPDATE OF q"
)
_FINISH_FINAL_MANY = (
    "UPDATE oncall_outbox o SET state = v.state, attempts = COALESCE(v.attempts, o.attempts),"
    " last_error = v.error, last_status = v.status, done_at = %s, delivered_by = %s"
    " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::int[]) AS v(seq, state, attempts, error, status)"
    " WHERE o.seq = v.seq AND o.state = 'inflight' RETURNING o.seq, o.body"
)
_LEDGER_ROWS = (
    "SELECT l.target, l.key, l.open, l.fired_levels, l.opened_at FROM oncall_ledger l"
    " JOIN unnest(%s::text[], %s::text[]) AS v(target, key) ON l.target = v.target AND l.key = v.key"
)
_LEDGER_OK = (
    "INSERT INTO oncall_ledger (target, key, open, level, fired_levels, body, opened_at, told_at, seq)"
    " VALUES (%s, %s, false, 'OK', '', %s, %s, %s, %s)"
    " ON CONFLICT (target, key) DO UPDATE SET open = false, level = 'OK', fired_levels = '',"
    " body = excluded.body, told_at = excluded.told_at, seq = excluded.seq"
)
_LEDGER_OPEN = (
    "INSERT INTO oncall_ledger (target, key, open, level, fired_levels, body, opened_at, told_at, seq)"
    " VALUES (%s, %s, true, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (target, key) DO UPDATE SET open = true, level = excluded.level,"
    " fired_levels = excluded.fired_levels, body = excluded.body, opened_at = excluded.opened_at,"
    " told_at = excluded.told_at, seq = excluded.seq"
)
_REFRESH_MANY = "SELECT oncall_refresh(v.target, v.key) FROM unnest(%s::text[], %s::text[]) AS v(target, key)"


def finish_rows(
    cur: "psycopg.Cursor[Any]", outcomes: Sequence[Outcome], replica_id: str, now: float
) -> List[Tuple[Outcome, bool]]:
    """Apply ``outcomes`` (at most one per key, sorted by key) in the open transaction;
    each comes back with True if it was stale (the row is no longer ours)."""
    targets = [o.head.target for o in outcomes]
    keys = [o.head.key for o in outcomes]
    held = {(t, k): (seq, owner) for t, k, seq, owner in cur.execute(_LOCK_KEYS, (targets, keys)).fetchall()}
    live: List[Outcome] = []
    results: List[Tuple[Outcome, bool]] = []
    for o in outcomes:
        stale = held.get((o.head.target, o.head.key)) != (o.head.seq, replica_id)
        results.append((o, stale))
        if not stale:
            live.append(o)
    if not live:
        return results
    pending = [(o.attempts, o.next_at, o.error, o.status, o.head.seq) for o in live if o.state == "pending"]
    if pending:
        cur.executemany(sql.FINISH_PENDING, pending)
    suppressed = [(now, o.head.seq) for o in live if o.state == "suppressed"]
    if suppressed:
        cur.executemany(sql.FINISH_SUPPRESSED, suppressed)
    silenced = [(now, o.head.seq) for o in live if o.state == "silenced"]
    if silenced:  # held by a silence; the release job tells the latest state
        cur.executemany(FINISH_SILENCED, silenced)
    final = [o for o in live if o.state not in ("pending", "suppressed", "silenced")]
    if final:
        _finish_final(cur, final, replica_id, now)
    cur.execute(_REFRESH_MANY, ([o.head.target for o in live], [o.head.key for o in live]))
    return results


def _finish_final(cur: "psycopg.Cursor[Any]", final: List[Outcome], replica_id: str, now: float) -> None:
    """Final states in one statement; the deliveries among them update the ledger."""
    bodies: Dict[int, bytes] = {
        int(seq): bytes(body)
        for seq, body in cur.execute(
            _FINISH_FINAL_MANY,
            (now, replica_id, [o.head.seq for o in final], [o.state for o in final], [o.attempts for o in final],
             [o.error for o in final], [o.status for o in final]),
        ).fetchall()
    }
    delivered = [o for o in final if o.state == "delivered" and o.head.seq in bodies]
    if not delivered:
        return
    cur.executemany(sql.SET_FORWARDED, [(o.head.level, o.head.received_at, o.head.target, o.head.key)
                                         for o in delivered])
    found = {(t, k): (is_open, fired, opened) for t, k, is_open, fired, opened in cur.execute(
        _LEDGER_ROWS, ([o.head.target for o in delivered], [o.head.key for o in delivered])).fetchall()}
    closes = []
    opens = []
    for o in delivered:
        h = o.head
        body = bodies[h.seq]
        if h.level == "OK":
            closes.append((h.target, h.key, body, now, now, h.seq))
        else:
            fired, opened_at = extend(found.get((h.target, h.key)), h.level, now)
            opens.append((h.target, h.key, h.level, fired, body, opened_at, now, h.seq))
    if closes:
        cur.executemany(_LEDGER_OK, closes)
    if opens:
        cur.executemany(_LEDGER_OPEN, opens)
