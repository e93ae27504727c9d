"""What the status page shows, read from the store (never from process memory).

A restart, another replica, or a bridge that is wedged all show the same truth. On
SQLite every value here is a read on a read-only connection of its own, so the page
works while the writer thread is busy and cannot change anything; on PostgreSQL
:mod:`bridge.pg.status` reads the same values from the database (the whole cluster)
on a pooled connection in a read-only transaction, plus the replicas and their jobs.
Both go through :meth:`bridge.backend.Store.status`; the values and the pure helpers
that shape them are here.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import StoreError
from .silences import Held, matches, row_fields
from .silences import Silence as StoredSilence
from .silences_sqlite import held_rows, list_silences

__all__ = [
    "ClusterInfo",
    "DeadLetter",
    "Delivered",
    "Incident",
    "Queued",
    "Replica",
    "Silence",
    "Snapshot",
    "StoreInfo",
    "TargetStatus",
    "connect",
    "held_counts",
    "open_per_target",
    "snapshot",
    "summarise",
    "target_statuses",
]

#: How many rows each list shows (the page must stay readable on a phone).
LAST_DELIVERIES = 100
MAX_DEAD = 200
MAX_QUEUED = 100
#: Silenced rows read to count what each silence holds (newest first).
MAX_HELD_SCAN = 5000


@dataclass(frozen=True)
class TargetStatus:
    """One target's health as the store tells it."""

    name: str
    type: str
    configured: bool
    pending: int
    inflight: int
    silenced: int
    dead: int
    oldest_pending_at: Optional[float]
    last_success_at: Optional[float]
    last_error: Optional[str]
    last_error_key: Optional[str]
    retrying_since: Optional[float]
    open_incidents: int

    @property
    def health(self) -> str:
        """``failing`` (retrying now), ``dead`` (dead letters wait), ``ok`` or ``idle``."""
        if self.retrying_since is not None:
            return "failing"
        if self.dead:
            return "dead"
        return "ok" if self.last_success_at is not None else "idle"


@dataclass(frozen=True)
class Queued:
    """An undelivered row: pending, in flight or held by a silence."""

    seq: int
    target: str
    key: str
    level: str
    state: str
    attempts: int
    queued_at: float
    next_attempt_at: float
    last_error: Optional[str]


@dataclass(frozen=True)
class DeadLetter:
    """A row the bridge gave up on, with why."""

    seq: int
    target: str
    key: str
    level: str
    attempts: int
    received_at: float
    died_at: Optional[float]
    last_error: Optional[str]
    last_status: Optional[int]


@dataclass(frozen=True)
class Delivered:
    """One finished row (delivered, suppressed, superseded...)."""

    seq: int
    target: str
    key: str
    level: str
    state: str
    attempts: int
    received_at: float
    done_at: float
    synthetic: bool


@dataclass(frozen=True)
class Incident:
    """What the platform currently believes is firing."""

    target: str
    key: str
    level: str
    since: float


@dataclass(frozen=True)
class Silence:
    """An active silence (see :mod:`bridge.silences`)."""

    id: str
    matchers: str
    starts_at: float
    ends_at: float
    comment: str
    created_by: str
    held: int


@dataclass(frozen=True)
class StoreInfo:
    """Where this bridge runs and what it keeps its promises in (a file, or a database
    named without credentials)."""

    host: str
    pid: int
    listen: str
    path: str
    size_bytes: int
    schema_version: int
    backend: str = "sqlite"


@dataclass(frozen=True)
class Replica:
    """A replica on the shared database: when it started, last proved it can commit (lease
    renewal or health probe), and
    which singleton jobs and in-flight rows it holds now."""

    id: str
    started_at: float
    seen_at: float
    jobs: Tuple[str, ...]
    inflight: int


@dataclass(frozen=True)
class ClusterInfo:
    """The replicas sharing the store (PostgreSQL): who serves this page and who does what."""

    replica_id: str
    jobs: Tuple[str, ...]  #: singleton jobs this replica holds
    replicas: Tuple[Replica, ...]


@dataclass(frozen=True)
class Snapshot:
    """Everything on the page, read in one transaction."""

    taken_at: float
    store: StoreInfo
    targets: Tuple[TargetStatus, ...]
    queued: Tuple[Queued, ...]
    dead: Tuple[DeadLetter, ...]
    deliveries: Tuple[Delivered, ...]
    incidents: Tuple[Incident, ...]
    silences: Tuple[Silence, ...]
    cluster: Optional[ClusterInfo] = None

    @property
    def ok(self) -> bool:
        return all(t.health in ("ok", "idle") for t in self.targets)


def connect(path: str) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``, ``query_only``) to an existing store."""
    if not os.path.exists(path):
        raise StoreError(f"store {path}: no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as exc:
        raise StoreError(f"store {path}: cannot open for reading ({exc})") from None
    return conn


def _per_target(conn: sqlite3.Connection) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}

    def slot(name: str) -> Dict[str, Any]:
        return out.setdefault(name, {"pending": 0, "inflight": 0, "silenced": 0, "dead": 0})

    for target, state, count in conn.execute(
        "SELECT target, state, count(*) FROM outbox WHERE state IN ('pending','inflight','silenced','dead')"
        " GROUP BY target, state"
    ):
        slot(target)[state] = count
    for target, oldest in conn.execute(
        "SELECT target, min(queued_at) FROM outbox WHERE state IN ('pending','inflight') GROUP BY target"
    ):
        slot(target)["oldest_pending_at"] = oldest
    for target, retrying in conn.execute(
        "SELECT target, min(queued_at) FROM outbox WHERE state IN ('pending','inflight') AND attempts > 0"
        " GROUP BY target"
    ):
        slot(target)["retrying_since"] = retrying
    for target, last in conn.execute(
        "SELECT target, max(done_at) FROM outbox WHERE state = 'delivered' GROUP BY target"
    ):
        slot(target)["last_success_at"] = last
    # The newest error per target: a row still retrying, or the latest dead letter.
    for target, key, error in conn.execute(
        "SELECT target, key, last_error FROM outbox o WHERE last_error IS NOT NULL"
        " AND state IN ('pending','inflight','dead') AND seq = ("
        "   SELECT max(seq) FROM outbox i WHERE i.target = o.target AND i.last_error IS NOT NULL"
        "   AND i.state IN ('pending','inflight','dead'))"
    ):
        slot(target).update(last_error=error, last_error_key=key)
    return out


def _incidents(conn: sqlite3.Connection) -> List[Incident]:
    """Open incidents, from the ledger (the store is migrated: it is the running bridge's)."""
    rows = conn.execute("SELECT target, key, level, opened_at FROM ledger WHERE open = 1 ORDER BY opened_at")
    return [Incident(t, k, level, since) for t, k, level, since in rows]


def _silences(conn: sqlite3.Connection, now: float) -> List[Silence]:
    return held_counts(list_silences(conn, now=now), held_rows(conn, MAX_HELD_SCAN), now)


def held_counts(silences: Sequence[StoredSilence], held: Sequence[Held], now: float) -> List[Silence]:
    """Active silences, with how many of ``held`` each matches (a row may match several)."""
    active = [s for s in silences if s.active(now)]
    counts: Dict[str, int] = {s.id: 0 for s in active}
    if active:
        for row in held:
            fields = row_fields(row.target, row.body, row.key, row.level)
            for silence in active:
                if matches(silence, fields):
                    counts[silence.id] += 1
    return [
        Silence(s.id, s.text, s.starts_at, s.ends_at, s.comment, s.created_by, counts[s.id]) for s in active
    ]


def open_per_target(incidents: Sequence[Incident]) -> Dict[str, int]:
    open_per: Dict[str, int] = {}
    for incident in incidents:
        open_per[incident.target] = open_per.get(incident.target, 0) + 1
    return open_per


def target_statuses(
    targets: Mapping[str, str], per: Mapping[str, Mapping[str, Any]], open_per: Mapping[str, int]
) -> List[TargetStatus]:
    """One row per configured target and per target that still has rows (sorted by name)."""
    statuses = []
    for name in sorted(set(targets) | set(per)):
        info = per.get(name, {})
        statuses.append(
            TargetStatus(
                name=name,
                type=targets.get(name, "not configured"),
                configured=name in targets,
                pending=info.get("pending", 0),
                inflight=info.get("inflight", 0),
                silenced=info.get("silenced", 0),
                dead=info.get("dead", 0),
                oldest_pending_at=info.get("oldest_pending_at"),
                last_success_at=info.get("last_success_at"),
                last_error=info.get("last_error"),
                last_error_key=info.get("last_error_key"),
                retrying_since=info.get("retrying_since"),
                open_incidents=open_per.get(name, 0),
            )
        )
    return statuses


def snapshot(
    conn: sqlite3.Connection,
    targets: Mapping[str, str],
    *,
    path: str,
    listen: str,
    now: Optional[float] = None,
) -> Snapshot:
    """Read the whole page from ``conn`` in one read transaction (a consistent picture)."""
    now = time.time() if now is None else now
    try:
        conn.execute("BEGIN")
        try:
            return _read(conn, targets, path=path, listen=listen, now=now)
        finally:
            conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise StoreError(f"store {path}: read failed ({exc})") from None


def _read(conn: sqlite3.Connection, targets: Mapping[str, str], *, path: str, listen: str, now: float) -> Snapshot:
    incidents = _incidents(conn)
    statuses = target_statuses(targets, _per_target(conn), open_per_target(incidents))
    queued = [
        Queued(*r)
        for r in conn.execute(
            "SELECT seq, target, key, level, state, attempts, queued_at, next_attempt_at, last_error FROM outbox"
            " WHERE state IN ('pending','inflight','silenced') ORDER BY seq LIMIT ?",
            (MAX_QUEUED,),
        )
    ]
    dead = [
        DeadLetter(*r)
        for r in conn.execute(
            "SELECT seq, target, key, level, attempts, received_at, done_at, last_error, last_status FROM outbox"
            " WHERE state = 'dead' ORDER BY seq DESC LIMIT ?",
            (MAX_DEAD,),
        )
    ]
    deliveries = [
        Delivered(seq, target, key, level, state, attempts, received, done, bool(synthetic))
        for seq, target, key, level, state, attempts, received, done, synthetic in conn.execute(
            "SELECT seq, target, key, level, state, attempts, received_at, done_at, synthetic FROM outbox"
            " WHERE done_at IS NOT NULL AND state NOT IN ('dead','pending','inflight','silenced')"
            " ORDER BY done_at DESC, seq DESC LIMIT ?",
            (LAST_DELIVERIES,),
        )
    ]
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    store = StoreInfo(socket.gethostname(), os.getpid(), listen, os.path.abspath(path), size, version)
    return Snapshot(
        taken_at=now,
        store=store,
        targets=tuple(statuses),
        queued=tuple(queued),
        dead=tuple(dead),
        deliveries=tuple(deliveries),
        incidents=tuple(incidents),
        silences=tuple(_silences(conn, now)),
    )


def summarise(rows: Sequence[TargetStatus]) -> Dict[str, int]:
    """Totals for the page header."""
    return {
        "queued": sum(t.pending + t.inflight for t in rows),
        "silenced": sum(t.silenced for t in rows),
        "dead": sum(t.dead for t in rows),
        "incidents": sum(t.open_incidents for t in rows),
    }
