"""A batch of outcomes in one transaction, set-based: a handful of statements per batch.

Both ``PgOutbox.finish`` (one outcome) and the finisher (a batch) record outcomes here,
so there is one set of rules: a row whose
key is no longer ours (another replica took it after the lease) is left alone
(stale); a retry goes back to pending with its schedule; a final state records
``done_at`` and who delivered; a delivery updates the key's last-forwarded event
and the incident ledger (:func:`bridge.ledger.extend`, shared by both backends);
a silenced row is kept on file; the key's queue head is refreshed. Per outcome that was six round trips and six
statements' worth of driver CPU; here a delivered batch is five statements whatever its
size (lock the keys, final states, read the ledger, upsert the ledger, refresh the heads
with the forwarded event), each over arrays (``unnest``): per-row statements, even
pipelined, cost driver CPU in the bridge and executor CPU in PostgreSQL per row, and
the drain of one replica is bound by that CPU. Retries, suppressions and silences are
rare and stay ``executemany``.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import psycopg

from ..ledger import extend
from ..store import Head, Outcome
from . import sql
from .arrays import bools, floats, ints, texts
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
    " WHERE o.seq = v.seq AND o.state = 'inflight' RETURNING o.seq"
)
_LEDGER_ROWS = (
    "SELECT l.target, l.key, l.open, l.fired_levels, l.opened_at FROM oncall_ledger l"
    " JOIN unnest(%s::text[], %s::text[]) AS v(target, key) ON l.target = v.target AND l.key = v.key"
)
#: The ledger rows of a batch's deliveries in one statement (one element per key): a resolve
#: closes the incident and keeps ``opened_at``; a trigger opens or extends it (``fired_levels``
#: and ``opened_at`` computed by :func:`bridge.ledger.extend`). The body is read from the
#: outbox row, not sent back and forth.
_LEDGER_MANY = (
    "INSERT INTO oncall_ledger AS l (target, key, open, level, fired_levels, body, opened_at, told_at, seq)"
    " SELECT v.target, v.key, v.open, v.level, v.fired, o.body, v.opened_at, %s, v.seq"
    " FROM unnest(%s::text[], %s::text[], %s::boolean[], %s::text[], %s::text[], %s::float8[], %s::bigint[])"
    " AS v(target, key, open, level, fired, opened_at, seq) JOIN oncall_outbox o ON o.seq = v.seq"
    " ORDER BY v.target, v.key"
    " ON CONFLICT (target, key) DO UPDATE SET open = excluded.open, level = excluded.level,"
    " fired_levels = excluded.fired_levels, body = excluded.body,"
    " opened_at = CASE WHEN excluded.open THEN excluded.opened_at ELSE l.opened_at END,"
    " told_at = excluded.told_at, seq = excluded.seq"
)
#: Every key of the batch: its queue head refreshed (what ``oncall_refresh`` does for one key:
#: the oldest pending row becomes the head, nothing in flight) and, for a delivery, its last
#: forwarded event (repeat suppression) set, one statement and one new row version per key.
_REFRESH_MANY = (
    "UPDATE oncall_queue q SET head_seq = h.seq, due = h.next_attempt_at, inflight_seq = NULL, owner = NULL,"
    " lease_until = NULL,"
    " fwd_level = CASE WHEN v.sent THEN v.level ELSE q.fwd_level END,"
    " fwd_received_at = CASE WHEN v.sent THEN v.received_at ELSE q.fwd_received_at END"
    " FROM unnest(%s::text[], %s::text[], %s::boolean[], %s::text[], %s::float8[])"
    " AS v(target, key, sent, level, received_at)"
    " LEFT JOIN LATERAL (SELECT o.seq, o.next_attempt_at FROM oncall_outbox o"
    " WHERE o.target = v.target AND o.key = v.key AND o.state = 'pending' ORDER BY o.seq LIMIT 1) h ON true"
    " WHERE q.target = v.target AND q.key = v.key"
)


def finish_rows(
    cur: "psycopg.Cursor[Any]", outcomes: Sequence[Outcome], replica_id: str, now: float
) -> List[Tuple[Outcome, bool]]:
    """Apply ``outcomes`` (at most one per key, sorted by key) in the open transaction;
    each comes back with True if it was stale (the row is no longer ours)."""
    targets = [o.head.target for o in outcomes]
    keys = [o.head.key for o in outcomes]
    held = {(t, k): (seq, owner) for t, k, seq, owner in cur.execute(_LOCK_KEYS, (texts(targets), texts(keys))).fetchall()}
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
    sent = {h.seq for h in _finish_final(cur, final, replica_id, now)} if final else set()
    heads = [o.head for o in live]
    cur.execute(_REFRESH_MANY, (texts([h.target for h in heads]), texts([h.key for h in heads]),
                                bools([h.seq in sent for h in heads]), texts([h.level for h in heads]),
                                floats([h.received_at for h in heads])))
    return results


def _finish_final(cur: "psycopg.Cursor[Any]", final: List[Outcome], replica_id: str, now: float) -> List[Head]:
    """Final states in one statement; the deliveries among them update the ledger in one
    more (the batch has at most one outcome per key). Returns the heads delivered."""
    done = {
        int(seq) for (seq,) in cur.execute(
            _FINISH_FINAL_MANY,
            (now, replica_id, ints([o.head.seq for o in final]), texts([o.state for o in final]),
             ints([o.attempts for o in final]), texts([o.error for o in final]), ints([o.status for o in final])),
        ).fetchall()
    }
    # One per key (an outcome handed twice must not make the upsert touch a row twice).
    delivered = list({(o.head.target, o.head.key): o.head for o in final
                      if o.state == "delivered" and o.head.seq in done}.values())
    if not delivered:
        return delivered
    targets = [h.target for h in delivered]
    keys = [h.key for h in delivered]
    triggers = [h for h in delivered if h.level != "OK"]  # a resolve's ledger row needs nothing it held
    found = {(t, k): (is_open, fired, opened) for t, k, is_open, fired, opened in cur.execute(
        _LEDGER_ROWS, (texts([h.target for h in triggers]), texts([h.key for h in triggers]))).fetchall()
    } if triggers else {}
    opens: List[bool] = []
    fired_levels: List[str] = []
    opened_at: List[float] = []
    for h in delivered:
        if h.level == "OK":
            fired, opened = "", now
        else:
            fired, opened = extend(found.get((h.target, h.key)), h.level, now)
        opens.append(h.level != "OK")
        fired_levels.append(fired)
        opened_at.append(opened)
    cur.execute(_LEDGER_MANY, (now, texts(targets), texts(keys), bools(opens), texts([h.level for h in delivered]),
                               texts(fired_levels), floats(opened_at), ints([h.seq for h in delivered])))
    return delivered
