"""The status page's snapshot on PostgreSQL: the whole cluster, read from the database.

One read-only ``REPEATABLE READ`` transaction on a pooled connection (never the writer's,
never a lock an insert or claim waits for), every list bounded by ``LIMIT``, and a
statement timeout so a slow database makes the page answer 503 rather than hang. The
values and their shaping are :mod:`bridge.status`'s, so both backends' pages agree.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, Mapping, Sequence, Tuple

import psycopg

from ..status import (
    LAST_DELIVERIES,
    MAX_DEAD,
    MAX_HELD_SCAN,
    MAX_QUEUED,
    ClusterInfo,
    DeadLetter,
    Delivered,
    Incident,
    Queued,
    Replica,
    Snapshot,
    StoreInfo,
    held_counts,
    target_statuses,
)
from .silences import held_rows, list_silences

__all__ = ["MAX_REPLICAS", "begin_read", "snapshot"]

#: Replicas listed (most recently seen first).
MAX_REPLICAS = 50

_COUNTS = (
    "SELECT target, state, count(*) FROM oncall_outbox WHERE state IN ('pending', 'inflight', 'silenced', 'dead')"
    " GROUP BY target, state"
)
_OLDEST = (
    "SELECT target, min(queued_at), min(queued_at) FILTER (WHERE attempts > 0) FROM oncall_outbox"
    " WHERE state IN ('pending', 'inflight') GROUP BY target"
)
#: The ledger's told_at is the time of an id's last delivery, so its maximum per target is the
#: target's last success (an O(ids) read, not a scan of the delivered history).
_LAST_SUCCESS = "SELECT target, max(told_at) FROM oncall_ledger GROUP BY target"
_LAST_ERROR = (
    "SELECT DISTINCT ON (target) target, key, last_error FROM oncall_outbox"
    " WHERE state IN ('pending', 'inflight', 'dead') AND last_error IS NOT NULL ORDER BY target, seq DESC"
)
_OPEN_COUNTS = "SELECT target, count(*) FROM oncall_ledger WHERE open GROUP BY target"
_INCIDENTS = "SELECT target, key, level, opened_at FROM oncall_ledger WHERE open ORDER BY opened_at LIMIT %s"
_QUEUED = (
    "SELECT seq, target, key, level, state, attempts, queued_at, next_attempt_at, last_error FROM oncall_outbox"
    " WHERE state IN ('pending', 'inflight', 'silenced') ORDER BY seq LIMIT %s"
)
_DEAD = (
    "SELECT seq, target, key, level, attempts, received_at, done_at, last_error, last_status FROM oncall_outbox"
    " WHERE state = 'dead' ORDER BY seq DESC LIMIT %s"
)
_DELIVERIES = (
    "SELECT seq, target, key, level, state, attempts, received_at, done_at, synthetic FROM oncall_outbox"
    " WHERE done_at IS NOT NULL AND state NOT IN ('dead', 'pending', 'inflight', 'silenced')"
    " ORDER BY done_at DESC, seq DESC LIMIT %s"
)
_REPLICAS = """
SELECT r.id, r.started_at, r.seen_at,
    COALESCE((SELECT array_agg(s.name ORDER BY s.name) FROM oncall_singleton s
              WHERE s.owner = r.id AND s.lease_until > oncall_now()), '{}'),
    (SELECT count(*) FROM oncall_queue q WHERE q.owner = r.id AND q.inflight_seq IS NOT NULL)
FROM oncall_replica r ORDER BY r.seen_at DESC, r.id LIMIT %s
"""
#: Incidents listed on the page (the ledger may hold more; the per-target counts are exact).
MAX_INCIDENTS = 1000


def begin_read(cur: "psycopg.Cursor[Any]", timeout_ms: int = 5000) -> None:
    """First statements of the transaction: one consistent, read-only picture, bounded in time."""
    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    cur.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")


def _per_target(cur: "psycopg.Cursor[Any]") -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}

    def slot(name: str) -> Dict[str, Any]:
        return out.setdefault(name, {"pending": 0, "inflight": 0, "silenced": 0, "dead": 0})

    for target, state, count in cur.execute(_COUNTS).fetchall():
        slot(target)[state] = int(count)
    for target, oldest, retrying in cur.execute(_OLDEST).fetchall():
        slot(target).update(oldest_pending_at=oldest, retrying_since=retrying)
    for target, key, error in cur.execute(_LAST_ERROR).fetchall():
        slot(target).update(last_error=error, last_error_key=key)
    for target, last in cur.execute(_LAST_SUCCESS).fetchall():
        out.setdefault(target, {})["last_success_at"] = last
    return out


def _replicas(cur: "psycopg.Cursor[Any]") -> Tuple[Replica, ...]:
    return tuple(
        Replica(str(r[0]), float(r[1]), float(r[2]), tuple(str(j) for j in r[3]), int(r[4]))
        for r in cur.execute(_REPLICAS, (MAX_REPLICAS,)).fetchall()
    )


def snapshot(
    cur: "psycopg.Cursor[Any]",
    targets: Mapping[str, str],
    *,
    listen: str,
    replica_id: str,
    jobs: Sequence[str],
    now: float,
) -> Snapshot:
    """Read the whole page inside the caller's transaction (:func:`begin_read` first)."""
    per = _per_target(cur)
    incidents = [Incident(t, k, level, float(since)) for t, k, level, since in
                 cur.execute(_INCIDENTS, (MAX_INCIDENTS,)).fetchall()]
    open_per = {str(t): int(n) for t, n in cur.execute(_OPEN_COUNTS).fetchall()}
    statuses = target_statuses(targets, per, open_per)
    queued = [Queued(*r) for r in cur.execute(_QUEUED, (MAX_QUEUED,)).fetchall()]
    dead = [DeadLetter(*r) for r in cur.execute(_DEAD, (MAX_DEAD,)).fetchall()]
    deliveries = [
        Delivered(seq, target, key, level, state, attempts, received, done, bool(synthetic))
        for seq, target, key, level, state, attempts, received, done, synthetic in
        cur.execute(_DELIVERIES, (LAST_DELIVERIES,)).fetchall()
    ]
    silences = held_counts(list_silences(cur, now=now), held_rows(cur, MAX_HELD_SCAN), now)
    found = cur.execute(
        "SELECT (SELECT max(version) FROM oncall_schema), pg_database_size(current_database()),"
        " current_database()"
    ).fetchone()
    assert found is not None
    info = cur.connection.info
    where = f"postgres: database {found[2]} on {info.host}:{info.port}"
    store = StoreInfo(socket.gethostname(), os.getpid(), listen, where, int(found[1]), int(found[0]), "postgres")
    cluster = ClusterInfo(replica_id, tuple(sorted(jobs)), _replicas(cur))
    return Snapshot(
        taken_at=now,
        store=store,
        targets=tuple(statuses),
        queued=tuple(queued),
        dead=tuple(dead),
        deliveries=tuple(deliveries),
        incidents=tuple(incidents),
        silences=tuple(silences),
        cluster=cluster,
    )

