"""Operations on the outbox file that an operator starts: replay, move, drop.

``replay`` may run while the bridge serves (the bridge notices the commit through
``PRAGMA data_version``); ``move`` and ``drop`` rewrite whole targets and refuse
while a bridge holds the store (:func:`serving_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

from .errors import StoreError
from .ledger import LastTold, last_told
from .store import _ROW_COLUMNS, Row, _row

__all__ = [
    "Dropped",
    "Forced",
    "Moved",
    "Replayed",
    "Superseded",
    "drop_target",
    "exclusive_lock",
    "move_target",
    "replay",
    "serving_lock",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Superseded:
    """A dead letter not re-sent: a later event of the same id carries the newer state."""

    row: Row
    by_seq: int
    by_state: str
    by_level: str


@dataclass(frozen=True)
class Forced:
    """A superseded dead letter re-sent anyway (``--force``), queued after the newer events."""

    row: Row
    new_seq: int
    effect: str  #: what it does to the platform's view, in words


@dataclass(frozen=True)
class Replayed:
    """What a replay did."""

    requeued: Tuple[Row, ...]
    superseded: Tuple[Superseded, ...]
    forced: Tuple[Forced, ...]

    @property
    def count(self) -> int:
        """Rows that will be sent."""
        return len(self.requeued) + len(self.forced)


def _later(cur: sqlite3.Cursor, row: Row) -> Optional[Tuple[int, str, str]]:
    """The newest event of the row's id after it that is not a dead letter, if any."""
    found = cur.execute(
        "SELECT seq, state, level FROM outbox WHERE target = ? AND key = ? AND seq > ? AND state != 'dead'"
        " ORDER BY seq DESC LIMIT 1",
        (row.target, row.key, row.seq),
    ).fetchone()
    if found is not None:
        return int(found[0]), str(found[1]), str(found[2])
    told = last_told(cur.connection, row.target, row.key)
    if told is not None and told.seq > row.seq:
        # The delivered row itself may have been pruned; the ledger remembers it.
        return told.seq, "delivered", told.level
    return None


def _effect(row: Row, told: Optional[LastTold], later_level: str) -> str:
    current = "never told" if told is None else f"last told {told.level}"
    if row.level != "OK":
        if told is None or told.level == "OK":
            return (
                f"re-opens {row.target} {row.key} at {row.level} (platform {current}; "
                f"Kapacitor's latest event is {later_level}): close it by hand or send a newer OK"
            )
        return f"sets {row.target} {row.key} back to {row.level} (platform {current}; latest event {later_level})"
    if later_level != "OK":
        return (
            f"resolves {row.target} {row.key} although its latest event is {later_level} "
            f"(platform {current}): the incident closes while Kapacitor still reports it"
        )
    return f"re-sends the resolve of {row.target} {row.key} (platform {current})"


def replay_rows(
    cur: sqlite3.Cursor, target: Optional[str], key: Optional[str], now: float, *, force: bool = False
) -> Replayed:
    """Dead letters back to pending, order-safe, inside the caller's transaction.

    A dead letter with no later event of its id goes back in place (fresh attempts
    and ``max_age`` clock). One that a later event supersedes (delivered, queued or
    in flight) is left dead and reported, because sending it would take the platform
    back to an older state; with ``force`` it is queued again *after* the newer
    events (a copy with a new seq; the old row becomes ``superseded``).
    """
    sql = f"SELECT {_ROW_COLUMNS} FROM outbox WHERE state = 'dead'"
    args: List[Any] = []
    if target is not None:
        sql += " AND target = ?"
        args.append(target)
    if key is not None:
        sql += " AND key = ?"
        args.append(key)
    rows = [_row(r) for r in cur.execute(sql + " ORDER BY seq", args).fetchall()]
    requeued: List[Row] = []
    superseded: List[Superseded] = []
    forced: List[Forced] = []
    for row in rows:
        later = _later(cur, row)
        if later is None:
            cur.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, queued_at = ?,"
                " done_at = NULL WHERE seq = ?",
                (now, now, row.seq),
            )
            requeued.append(row)
        elif not force:
            superseded.append(Superseded(row, *later))
        else:
            told = last_told(cur.connection, row.target, row.key)
            cur.execute(
                "INSERT INTO outbox (target, key, level, body, received_at, queued_at, state, next_attempt_at,"
                " synthetic) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (row.target, row.key, row.level, row.body, row.received_at, now, now, int(row.synthetic)),
            )
            new_seq = int(cur.lastrowid or 0)
            cur.execute(
                "UPDATE outbox SET state = 'superseded', done_at = ?, last_error = ? WHERE seq = ?",
                (now, f"replayed with --force as #{new_seq}", row.seq),
            )
            forced.append(Forced(row, new_seq, _effect(row, told, later[2])))
    return Replayed(tuple(requeued), tuple(superseded), tuple(forced))


def _in_transaction(conn: sqlite3.Connection, what: str, fn: Callable[[sqlite3.Cursor], T]) -> T:
    cur = conn.cursor()
    try:
        cur.execute("BEGIN IMMEDIATE")
        result = fn(cur)
        cur.execute("COMMIT")
    except sqlite3.Error as exc:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise StoreError(f"{what} failed: {exc}") from None
    return result


def replay(
    conn: sqlite3.Connection, target: Optional[str] = None, key: Optional[str] = None, *, force: bool = False
) -> Replayed:
    """Order-safe replay from another process. A running bridge notices the commit
    (``PRAGMA data_version``) within its housekeeping tick."""
    return _in_transaction(conn, "replay", lambda cur: replay_rows(cur, target, key, time.time(), force=force))


# -- move / drop: whole targets, never while a bridge serves --------------------------


@contextlib.contextmanager
def serving_lock(path: str) -> Iterator[None]:
    """Held by a serving bridge (shared, so tests may open several outboxes on one file);
    ``move``/``drop`` take it exclusively."""
    with _flock(path, fcntl.LOCK_SH, "a move or drop is rewriting the store; retry when it is done"):
        yield


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Refuse while a bridge (or another move/drop) holds the store."""
    with _flock(path, fcntl.LOCK_EX, "a bridge is serving from this store: stop it first (systemctl stop ...)"):
        yield


@contextlib.contextmanager
def _flock(path: str, mode: int, busy: str) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StoreError(f"store {path}: cannot open for locking: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"store {path}: {busy}") from None
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Moved:
    """Rows per state moved from one target to another, and ledger entries carried along."""

    rows: Dict[str, int]
    incidents: int
    timers: int


@dataclass(frozen=True)
class Dropped:
    """Rows per state deleted for a target, and what else of it went."""

    rows: Dict[str, int]
    incidents: int
    timers: int


def _counts(cur: sqlite3.Cursor, target: str) -> Dict[str, int]:
    return {s: n for s, n in cur.execute("SELECT state, count(*) FROM outbox WHERE target = ? GROUP BY state", (target,))}


def move_target(conn: sqlite3.Connection, old: str, new: str) -> Moved:
    """Give every row of ``old`` to ``new`` (a renamed target). Per-id order is kept because
    seqs do not change; an id that exists under both names keeps both histories in seq order.
    Ledger rows and auto-resolve timers move too, unless ``new`` already has one for the id."""
    if old == new:
        raise StoreError("move: --from and --to are the same target")

    def run(cur: sqlite3.Cursor) -> Moved:
        rows = _counts(cur, old)
        cur.execute("UPDATE outbox SET target = ? WHERE target = ?", (new, old))
        incidents = cur.execute(
            "UPDATE OR IGNORE ledger SET target = ? WHERE target = ?", (new, old)
        ).rowcount
        cur.execute("DELETE FROM ledger WHERE target = ?", (old,))
        timers = cur.execute("UPDATE OR IGNORE expiry SET target = ? WHERE target = ?", (new, old)).rowcount
        cur.execute("DELETE FROM expiry WHERE target = ?", (old,))
        cur.execute("UPDATE OR IGNORE last_forwarded SET target = ? WHERE target = ?", (new, old))
        cur.execute("DELETE FROM last_forwarded WHERE target = ?", (old,))
        return Moved(rows, incidents, timers)

    return _in_transaction(conn, "move", run)


def drop_target(conn: sqlite3.Connection, target: str) -> Dropped:
    """Delete every row, ledger entry and timer of ``target`` (a removed target)."""

    def run(cur: sqlite3.Cursor) -> Dropped:
        rows = _counts(cur, target)
        cur.execute("DELETE FROM outbox WHERE target = ?", (target,))
        incidents = cur.execute("DELETE FROM ledger WHERE target = ? AND open = 1", (target,)).rowcount
        cur.execute("DELETE FROM ledger WHERE target = ?", (target,))
        timers = cur.execute("DELETE FROM expiry WHERE target = ?", (target,)).rowcount
        cur.execute("DELETE FROM last_forwarded WHERE target = ?", (target,))
        return Dropped(rows, incidents, timers)

    return _in_transaction(conn, "drop", run)
