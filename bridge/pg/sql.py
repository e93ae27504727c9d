"""SQL the PostgreSQL store runs, kept apart from the control flow that runs it.

Statements use psycopg's ``%(name)s`` / ``%s`` placeholders; the server-side
functions they call (``oncall_enqueue``, ``oncall_refresh``,
``oncall_resume_expired``) are defined by the migrations in :mod:`.schema`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import psycopg

from ..ledger import COLUMNS as INCIDENT_COLUMNS
from ..ledger import Incident, LastTold, incident_of
from ..store import Row

ROW_COLUMNS = (
    "o.seq, o.target, o.key, o.level, o.body, o.received_at, o.queued_at, o.state, o.attempts, "
    "o.next_attempt_at, o.last_error, o.last_status, o.synthetic"
)

ENQUEUE = "SELECT seq, dup FROM oncall_enqueue(%s, %s, %s, %s, %s, %s, %s, %s)"
#: A writer's batch as eight arrays (one element per event, in arrival order) and the replica id
#: (the NOTIFY payload): (ord, seq, dup, became head) rows.
ENQUEUE_MANY = (
    "SELECT o_ord, o_seq, o_dup, o_head FROM oncall_enqueue_many(%s::text[], %s::text[], %s::text[], %s::bytea[],"
    " %s::float8[], %s::float8[], %s::boolean[], %s::bytea[], %s)"
)

#: Claim up to ``n`` ready heads of a target: queue rows locked with SKIP LOCKED (a key being
#: inserted or claimed by another replica is skipped, never waited for), marked in flight with
#: our owner and lease, and the rows (bodies included) returned for delivery.
_PICK_DUE = """
    SELECT target, key, head_seq FROM oncall_queue
    WHERE target = %(target)s AND head_seq IS NOT NULL AND due <= %(now)s
      AND (held_until IS NULL OR held_until < oncall_now())
    ORDER BY due LIMIT %(n)s
    FOR UPDATE SKIP LOCKED"""
#: Only heads that are resolves (``peek(resolves_first=True)`` under a rate limit).
_PICK_RESOLVES = """
    SELECT x.target, x.key, x.head_seq FROM oncall_queue x JOIN oncall_outbox h ON h.seq = x.head_seq
    WHERE x.target = %(target)s AND x.head_seq IS NOT NULL AND x.due <= %(now)s AND h.level = 'OK'
      AND (x.held_until IS NULL OR x.held_until < oncall_now())
    ORDER BY x.due LIMIT %(n)s
    FOR UPDATE OF x SKIP LOCKED"""
_CLAIM = """
WITH c AS ({pick}
), q AS (
    UPDATE oncall_queue x SET inflight_seq = c.head_seq, head_seq = NULL, due = NULL, owner = %(me)s,
        lease_until = oncall_now() + %(lease)s
    FROM c WHERE x.target = c.target AND x.key = c.key
    RETURNING x.inflight_seq AS seq, x.fwd_level, x.fwd_received_at
)
UPDATE oncall_outbox o SET state = 'inflight' FROM q WHERE o.seq = q.seq
RETURNING {columns}, q.fwd_level, q.fwd_received_at
"""
CLAIM = _CLAIM.format(pick=_PICK_DUE, columns=ROW_COLUMNS)
CLAIM_RESOLVES = _CLAIM.format(pick=_PICK_RESOLVES, columns=ROW_COLUMNS)

NEXT_DUE = "SELECT min(due) FROM oncall_queue WHERE target = %s AND head_seq IS NOT NULL"

FINISH_PENDING = (
    "UPDATE oncall_outbox SET state = 'pending', attempts = COALESCE(%s, attempts), next_attempt_at = %s,"
    " last_error = %s, last_status = %s WHERE seq = %s AND state = 'inflight'"
)
FINISH_SUPPRESSED = "UPDATE oncall_outbox SET state = 'suppressed', done_at = %s WHERE seq = %s AND state = 'inflight'"
REFRESH = "SELECT oncall_refresh(%s, %s)"

RENEW = (
    "UPDATE oncall_queue SET lease_until = oncall_now() + %s WHERE owner = %s AND inflight_seq IS NOT NULL"
)
RESUME_EXPIRED = "SELECT oncall_resume_expired(%s)"
#: Our own rows (this replica id, an earlier life of it, or claimed but never started) back to pending.
RELEASE_OWN = """
SELECT target, key, inflight_seq FROM oncall_queue WHERE owner = %s AND inflight_seq IS NOT NULL
ORDER BY target, key FOR UPDATE
"""
BACK_TO_PENDING = "UPDATE oncall_outbox SET state = 'pending' WHERE seq = %s AND state = 'inflight'"

TAKE_SINGLETON = """
UPDATE oncall_singleton SET taken = taken + (owner IS DISTINCT FROM %(me)s)::int, owner = %(me)s,
    lease_until = oncall_now() + %(lease)s
WHERE name = %(name)s AND (owner = %(me)s OR lease_until < oncall_now())
RETURNING name
"""
HOLD_SINGLETON = (
    "SELECT 1 FROM oncall_singleton WHERE name = %s AND owner = %s AND lease_until > oncall_now() FOR UPDATE"
)

DUE_EXPIRIES = "SELECT target, key FROM oncall_expiry WHERE due_at <= %s ORDER BY due_at LIMIT 500"
LOCK_QUEUE = (
    "INSERT INTO oncall_queue AS x (target, key) VALUES (%s, %s)"
    " ON CONFLICT (target, key) DO UPDATE SET target = x.target"
)
TAKE_EXPIRY = "DELETE FROM oncall_expiry WHERE target = %s AND key = %s AND due_at <= %s RETURNING body"

PRUNE = (
    "DELETE FROM oncall_outbox WHERE seq IN (SELECT seq FROM oncall_outbox WHERE state = %s"
    " ORDER BY seq DESC LIMIT %s OFFSET %s)"
)
FORGET = (
    "UPDATE oncall_queue SET fwd_level = NULL, fwd_received_at = NULL"
    " WHERE fwd_received_at < %s AND fwd_level IS NOT NULL"
)
#: Closed incidents past ``bridge.ledger.CLOSED_KEEP`` whose id has no dead letter left.
PRUNE_CLOSED = (
    "DELETE FROM oncall_ledger WHERE (target, key) IN (SELECT l.target, l.key FROM oncall_ledger l"
    " WHERE NOT l.open AND l.told_at < %s AND NOT EXISTS (SELECT 1 FROM oncall_outbox o"
    " WHERE o.state = 'dead' AND o.target = l.target AND o.key = l.key) LIMIT %s)"
)
DROP_IDLE_QUEUES = (
    "DELETE FROM oncall_queue WHERE head_seq IS NULL AND inflight_seq IS NULL AND fwd_level IS NULL"
    " AND (held_until IS NULL OR held_until < oncall_now())"
)

STATS = (
    "SELECT target, state, count(*) FROM oncall_outbox WHERE state IN ('pending', 'inflight', 'dead')"
    " GROUP BY target, state"
)
OLDEST = (
    "SELECT min(received_at) FROM (SELECT received_at FROM oncall_outbox WHERE state IN ('pending', 'inflight')"
    " ORDER BY state, seq LIMIT 2) s"
)

HOLD = """
UPDATE oncall_queue SET held_by = %(me)s, held_until = oncall_now() + %(hold)s
WHERE target = %(target)s AND key = ANY(%(keys)s) AND head_seq IS NULL AND inflight_seq IS NULL
  AND (held_until IS NULL OR held_until < oncall_now())
RETURNING key
"""
ENSURE_QUEUES = (
    "INSERT INTO oncall_queue (target, key) SELECT %s, k FROM unnest(%s::text[]) AS k ORDER BY k"
    " ON CONFLICT DO NOTHING"
)
RELEASE_HOLD = (
    "UPDATE oncall_queue SET held_by = NULL, held_until = NULL WHERE target = %s AND key = ANY(%s) AND held_by = %s"
)
IDLE = (
    "SELECT head_seq IS NULL AND inflight_seq IS NULL AND (held_until IS NULL OR held_until < oncall_now())"
    " FROM oncall_queue WHERE target = %s AND key = %s"
)


def to_row(t: Sequence[Any]) -> Row:
    return Row(
        seq=t[0], target=t[1], key=t[2], level=t[3], body=bytes(t[4]), received_at=t[5], queued_at=t[6],
        state=t[7], attempts=t[8], next_attempt_at=t[9], last_error=t[10], last_status=t[11], synthetic=bool(t[12]),
    )


def load_row(conn: "psycopg.Connection[Any]", seq: int) -> Optional[Row]:
    found = conn.execute(f"SELECT {ROW_COLUMNS} FROM oncall_outbox o WHERE o.seq = %s", (seq,)).fetchone()
    return None if found is None else to_row(found)


# -- the incident ledger: the same rules as bridge.ledger, in PostgreSQL -------------------


def open_incidents(conn: "psycopg.Connection[Any]", target: Optional[str] = None) -> List[Incident]:
    sql = f"SELECT {INCIDENT_COLUMNS} FROM oncall_ledger WHERE open"
    args: List[Any] = []
    if target is not None:
        sql += " AND target = %s"
        args.append(target)
    sql += " ORDER BY opened_at, target, key"
    return [incident_of(r) for r in conn.execute(sql, args)]


def told(conn: "psycopg.Connection[Any]", target: str, key: str) -> Optional[Incident]:
    return told_many(conn, target, [key]).get(key)


def told_many(conn: "psycopg.Connection[Any]", target: str, keys: Sequence[str]) -> Dict[str, Incident]:
    """The open incidents of several ids of one target, by id, in one query."""
    rows = conn.execute(
        f"SELECT {INCIDENT_COLUMNS} FROM oncall_ledger WHERE open AND target = %s AND key = ANY(%s)",
        (target, list(keys)),
    )
    return {incident.key: incident for incident in map(incident_of, rows)}


def last_told(conn: "psycopg.Connection[Any]", target: str, key: str) -> Optional[LastTold]:
    found = conn.execute(
        "SELECT level, seq, told_at FROM oncall_ledger WHERE target = %s AND key = %s", (target, key)
    ).fetchone()
    return None if found is None else LastTold(found[0], found[1], found[2])


# -- outage coalescing (the plan is bridge.coalesce.keep; these find and apply it) ----------

#: Keys of a target with several pending rows, nothing in flight, and a backlog: the head has
#: failed before (due after receipt), waited ``backlog`` seconds, or ``limited`` (rate limit).
COALESCIBLE = """
SELECT q.key FROM oncall_queue q JOIN oncall_outbox h ON h.seq = q.head_seq
WHERE q.target = %(target)s AND q.head_seq IS NOT NULL AND q.inflight_seq IS NULL
  AND (%(limited)s OR q.due > h.received_at OR %(now)s - h.received_at >= %(backlog)s)
  AND EXISTS (SELECT 1 FROM oncall_outbox p WHERE p.target = q.target AND p.key = q.key
              AND p.state = 'pending' AND p.seq > q.head_seq AND p.seq > COALESCE(q.coalesced_upto, 0))
ORDER BY q.due LIMIT %(limit)s
"""
#: The keys' queue rows, locked (in key order, skipping any another replica is inserting into,
#: claiming or coalescing), and only those with nothing in flight.
LOCK_COALESCIBLE = """
SELECT key FROM oncall_queue WHERE target = %s AND key = ANY(%s) AND inflight_seq IS NULL
ORDER BY key FOR UPDATE SKIP LOCKED
"""
PENDING_OF_KEYS = """
SELECT key, seq, level, attempts, next_attempt_at, last_error, last_status FROM oncall_outbox
WHERE target = %s AND key = ANY(%s) AND state = 'pending' ORDER BY key, seq
"""
TOLD_LEVELS = "SELECT key, level FROM oncall_ledger WHERE target = %s AND key = ANY(%s)"
SUPERSEDE = """
UPDATE oncall_outbox o SET state = 'superseded', done_at = %s,
    last_error = 'superseded by #' || v.latest || ' (coalesced)'
FROM unnest(%s::bigint[], %s::bigint[]) AS v(seq, latest) WHERE o.seq = v.seq AND o.state = 'pending'
"""
#: The first kept row inherits the old head's retry schedule (same backoff, not a fresh burst).
INHERIT = """
UPDATE oncall_outbox o SET attempts = v.attempts, next_attempt_at = v.due,
    last_error = COALESCE(v.error, o.last_error), last_status = COALESCE(v.status, o.last_status)
FROM unnest(%s::bigint[], %s::int[], %s::float8[], %s::text[], %s::int[]) AS v(seq, attempts, due, error, status)
WHERE o.seq = v.seq
"""
REFRESH_KEYS = "SELECT oncall_refresh(%s, k) FROM unnest(%s::text[]) AS k"
COALESCED_UPTO = """
UPDATE oncall_queue q SET coalesced_upto = v.upto FROM unnest(%s::text[], %s::bigint[]) AS v(key, upto)
WHERE q.target = %s AND q.key = v.key
"""

