"""The outbox's SQLite file: schema, the values read from it, opening, offline commands.

:mod:`bridge.outbox` owns the live file (one writer thread, the in-memory
index); this module is what both it and the CLI (``queue``, ``replay``, which may
run while a bridge is serving) need to open, validate and read the file.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import StoreError

__all__ = [
    "APPLICATION_ID",
    "Forwarded",
    "MIGRATIONS",
    "Head",
    "Outcome",
    "OutcomeDone",
    "Row",
    "SCHEMA_VERSION",
    "STATES",
    "Stats",
    "dead_letters",
    "open_store",
    "queue_counts",
]

#: ``PRAGMA application_id``: "konc". A SQLite file without it is not ours.
APPLICATION_ID = 0x6B6F6E63
STATES = ("pending", "inflight", "delivered", "dead", "suppressed", "superseded", "silenced")

_OUTBOX_TABLE = """
CREATE TABLE {name} (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    target          TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    level           TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    received_at     REAL    NOT NULL,
    queued_at       REAL    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ({states})),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    last_error      TEXT,
    last_status     INTEGER,
    done_at         REAL,
    synthetic       INTEGER NOT NULL DEFAULT 0
);
"""
_OUTBOX_INDEXES = """
CREATE INDEX outbox_key_pending ON outbox (target, key, seq) WHERE state = 'pending';
CREATE INDEX outbox_state ON outbox (state, seq);
"""


def _states_sql(states: Sequence[str]) -> str:
    return ",".join(f"'{s}'" for s in states)


#: Version 1: the outbox, repeat suppression memory, auto-resolve timers.
_V1 = (
    _OUTBOX_TABLE.format(name="outbox", states=_states_sql(STATES[:5]))
    + _OUTBOX_INDEXES
    + """
CREATE TABLE last_forwarded (
    target      TEXT NOT NULL,
    key         TEXT NOT NULL,
    level       TEXT NOT NULL,
    received_at REAL NOT NULL,
    sent_at     REAL NOT NULL,
    PRIMARY KEY (target, key)
);
CREATE TABLE expiry (
    target TEXT NOT NULL,
    key    TEXT NOT NULL,
    due_at REAL NOT NULL,
    body   BLOB NOT NULL,
    PRIMARY KEY (target, key)
);
CREATE INDEX expiry_due ON expiry (due_at);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
"""
)

#: Version 2: the incident ledger (what each platform was last told per id, see
#: :mod:`bridge.ledger`), and the outbox's ``superseded`` (coalescing) and
#: ``silenced`` states. SQLite cannot alter a CHECK constraint, so the outbox
#: table is rebuilt; its AUTOINCREMENT counter is carried over so no seq is reused.
#: The ledger is seeded from the newest delivered row of every id still on file.
_V2 = (
    _OUTBOX_TABLE.format(name="outbox_v2", states=_states_sql(STATES))
    + """
INSERT INTO outbox_v2 SELECT seq, target, key, level, body, received_at, queued_at, state, attempts,
    next_attempt_at, last_error, last_status, done_at, synthetic FROM outbox;
INSERT OR REPLACE INTO meta (name, value) SELECT 'migrate_seq', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
UPDATE sqlite_sequence SET seq = max(seq, COALESCE((SELECT CAST(value AS INTEGER) FROM meta
    WHERE name = 'migrate_seq'), 0)) WHERE name = 'outbox';
DELETE FROM meta WHERE name = 'migrate_seq';
"""
    + _OUTBOX_INDEXES
    + """
CREATE TABLE ledger (
    target       TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    open         INTEGER NOT NULL,
    level        TEXT    NOT NULL,
    fired_levels TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    opened_at    REAL    NOT NULL,
    told_at      REAL    NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (target, key)
);
CREATE INDEX ledger_open ON ledger (target, key) WHERE open = 1;
INSERT INTO ledger (target, key, open, level, fired_levels, body, opened_at, told_at, seq)
    SELECT o.target, o.key, o.level != 'OK', o.level, CASE WHEN o.level = 'OK' THEN '' ELSE o.level END,
        o.body, COALESCE(o.done_at, o.queued_at), COALESCE(o.done_at, o.queued_at), o.seq
    FROM outbox o WHERE o.seq IN (SELECT MAX(seq) FROM outbox WHERE state = 'delivered' GROUP BY target, key);
"""
)

#: Ordered schema migrations, version -> SQL; applied at open in one transaction.
#: A fresh file runs them all. Append only: never edit a released step.
#: Version 3: silences (see :mod:`bridge.silences`); rows they hold are in state 'silenced'.
_V3 = """
CREATE TABLE silences (
    id          TEXT PRIMARY KEY,
    matchers    TEXT NOT NULL,
    starts_at   REAL NOT NULL,
    ends_at     REAL NOT NULL,
    comment     TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expired_at  REAL
);
CREATE INDEX silences_ends ON silences (ends_at) WHERE expired_at IS NULL;
CREATE INDEX outbox_silenced ON outbox (target, key, seq) WHERE state = 'silenced';
"""

MIGRATIONS: List[Tuple[int, str]] = [(1, _V1), (2, _V2), (3, _V3)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


@dataclass(frozen=True)
class Row:
    """One outbox row as stored."""

    seq: int
    target: str
    key: str
    level: str
    body: bytes
    received_at: float
    queued_at: float
    state: str
    attempts: int
    next_attempt_at: float
    last_error: Optional[str]
    last_status: Optional[int]
    synthetic: bool


@dataclass(frozen=True)
class Head:
    """The oldest pending row of one ``(target, key)`` queue: the only one that may go next."""

    target: str
    key: str
    seq: int
    due: float
    level: str
    received_at: float


@dataclass(frozen=True)
class Outcome:
    """What became of a claimed head, to be recorded by ``Store.finish_many``: delivered,
    dead, suppressed, silenced, or pending again (``attempts``/``next_at`` resume the schedule)."""

    head: Head
    state: str
    attempts: Optional[int] = None
    next_at: Optional[float] = None
    error: Optional[str] = None
    status: Optional[int] = None


#: The states an outcome may record.
OUTCOME_STATES = ("delivered", "dead", "suppressed", "silenced", "pending")


def check_outcome(state: str, next_at: Optional[float]) -> None:
    """Refuse an outcome no store can record (a bug in the caller, not a store failure)."""
    if state not in OUTCOME_STATES:
        raise ValueError(f"bad final state {state!r}")
    if state == "pending" and next_at is None:
        raise ValueError("a retry needs next_at")


#: Called once per outcome of ``Store.finish_many``: error None once it is durable.
OutcomeDone = Callable[[Outcome, Optional[BaseException]], None]


@dataclass(frozen=True)
class Forwarded:
    """The last event actually delivered for a key (repeat suppression looks here)."""

    level: str
    received_at: float


@dataclass(frozen=True)
class Stats:
    """Queue depth per target and the health of the store, for /healthz and /metrics."""

    pending: Dict[str, int]
    inflight: Dict[str, int]
    dead: Dict[str, int]
    oldest_pending_age: Optional[float]
    writable: bool
    last_error: Optional[str]
    #: Age of the oldest undelivered row per target (configured or not).
    oldest_by_target: Dict[str, float] = field(default_factory=dict)
    #: Open incidents per target, from the ledger on file.
    incidents_open: Dict[str, int] = field(default_factory=dict)
    #: Store operations that failed with nobody waiting for them, by operation.
    failed_ops: Dict[str, int] = field(default_factory=dict)

    @property
    def total_pending(self) -> int:
        return sum(self.pending.values()) + sum(self.inflight.values())


_ROW_COLUMNS = (
    "seq, target, key, level, body, received_at, queued_at, state, attempts, "
    "next_attempt_at, last_error, last_status, synthetic"
)


def _row(t: Sequence[Any]) -> Row:
    return Row(
        seq=t[0],
        target=t[1],
        key=t[2],
        level=t[3],
        body=bytes(t[4]),
        received_at=t[5],
        queued_at=t[6],
        state=t[7],
        attempts=t[8],
        next_attempt_at=t[9],
        last_error=t[10],
        last_status=t[11],
        synthetic=bool(t[12]),
    )


# -- opening and validating the file ------------------------------------------------


def _store_error(path: str, exc: BaseException, doing: str) -> StoreError:
    """Say what went wrong in words an operator can act on."""
    text = str(exc)
    lowered = text.lower()
    if "full" in lowered or "too big" in lowered or isinstance(exc, OSError) and exc.errno == 27:
        hint = "disk full or file size limit reached"
    elif "readonly" in lowered or "read-only" in lowered or "permission" in lowered:
        hint = "store is read-only (check file and directory permissions)"
    elif "unable to open" in lowered:
        hint = (
            "cannot open or create the store files: the file or its directory is read-only or "
            "not writable (SQLite needs to create -wal and -shm files next to it)"
        )
    elif "malformed" in lowered or "not a database" in lowered or "corrupt" in lowered:
        hint = "file is corrupt or not a kapacitor-oncall store"
    elif "disk i/o" in lowered:
        hint = "I/O error (disk full, file size limit, or failing disk)"
    elif "locked" in lowered or "busy" in lowered:
        hint = "another process holds the store locked"
    else:
        hint = "SQLite error"
    return StoreError(f"store {path}: {doing} failed: {hint} ({text})")


def open_store(path: str, *, create: bool = True, timeout: float = 10.0) -> sqlite3.Connection:
    """Open (and if new, create with mode 0600) the outbox file; refuse foreign or corrupt files."""
    exists = os.path.exists(path)
    if not exists:
        if not create:
            raise StoreError(f"store {path}: no such file (has the bridge run with this config?)")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StoreError(f"store {path}: directory {directory} does not exist")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"store {path}: cannot create: {exc.strerror}") from None
    elif os.path.isdir(path):
        raise StoreError(f"store {path}: is a directory")
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _store_error(path, exc, "open") from None
    try:
        _check_or_init(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_or_init(conn: sqlite3.Connection, path: str) -> None:
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.OperationalError as exc:
        # I/O, permissions, locks: the file may be a perfectly good store; never advise moving it.
        raise _store_error(path, exc, "open") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"store {path}: not a kapacitor-oncall store ({exc}); "
            "move the file away or point [store] path elsewhere"
        ) from None
    if app_id == 0 and tables == 0:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise _store_error(path, exc, "initialise") from None
        _migrate(conn, path, fresh=True)
        return
    if app_id != APPLICATION_ID:
        raise StoreError(
            f"store {path}: a SQLite database of another application (application_id={app_id:#x}); "
            "refusing to touch it: point [store] path at a new file"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {path}: schema version {version} is newer than this bridge understands ({SCHEMA_VERSION})"
        )
    try:
        result = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError as exc:
        raise _store_error(path, exc, "open") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"store {path}: corrupt ({exc}); restore it or move it away") from None
    if result != [("ok",)]:
        first = "; ".join(str(r[0]) for r in result[:3])
        raise StoreError(f"store {path}: corrupt ({first}); restore it or move it away")
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.Error as exc:
        raise _store_error(path, exc, "open") from None
    if mode.lower() != "wal":
        raise StoreError(f"store {path}: cannot switch to WAL journal mode (got {mode})")
    if version < SCHEMA_VERSION:
        _migrate(conn, path, fresh=False)


def _statements(script: str) -> List[str]:
    """Split a migration script into complete statements (our SQL has no ``;`` in literals)."""
    out: List[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete statement in migration: {pending.strip()[:60]}")
    return out


def _migrate(conn: sqlite3.Connection, path: str, *, fresh: bool) -> None:
    """Bring the file to :data:`SCHEMA_VERSION` in one transaction.

    The version is read again under the write lock, so two processes opening an
    old file at once migrate it once; a crash mid-way leaves the old version whole.
    """
    cur = conn.cursor()
    try:
        cur.execute("BEGIN IMMEDIATE")
        version = cur.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            cur.execute("ROLLBACK")
            raise StoreError(
                f"store {path}: schema version {version} is newer than this bridge understands ({SCHEMA_VERSION})"
            )
        for step, script in MIGRATIONS:
            if step > version:
                for statement in _statements(script):
                    cur.execute(statement)
        if fresh:
            cur.execute(f"PRAGMA application_id={APPLICATION_ID}")
        cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        cur.execute("COMMIT")
    except sqlite3.Error as exc:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise _store_error(path, exc, "initialise" if fresh else "schema upgrade") from None


# -- offline operations for the CLI (another process may be serving) ---------------


def queue_counts(conn: sqlite3.Connection) -> Dict[Tuple[str, str], int]:
    """Rows per (target, state)."""
    return {
        (t, s): n for t, s, n in conn.execute("SELECT target, state, count(*) FROM outbox GROUP BY target, state")
    }


def dead_letters(conn: sqlite3.Connection, target: Optional[str] = None, limit: int = 1000) -> List[Row]:
    """Dead rows, oldest first."""
    sql = f"SELECT {_ROW_COLUMNS} FROM outbox WHERE state = 'dead'"
    args: List[Any] = []
    if target is not None:
        sql += " AND target = ?"
        args.append(target)
    sql += " ORDER BY seq LIMIT ?"
    args.append(limit)
    return [_row(r) for r in conn.execute(sql, args)]
