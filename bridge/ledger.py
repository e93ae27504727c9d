"""The incident ledger: what each platform was last told, per ``(target, id)``.

The outbox records what Kapacitor said; the ledger records what the platform
*believes*. It is written in the same transaction as the delivery that told the
platform (:meth:`bridge.outbox.Outbox.finish` with ``"delivered"``), so after a
crash or ``kill -9`` it never claims a delivery that did not commit, and never
forgets one that did. Reconcile, keep-alive, coalescing and order-safe replay all
read it.

A row is *open* while the platform believes the id is firing (the last delivered
level was not OK). An OK delivery closes it; the closed row is kept (level
``OK``, the seq of that delivery) because replay and coalescing need to know that
a resolve was told, and when. It is kept for :data:`CLOSED_KEEP` after that
delivery, and longer while a dead letter of the id is on file (``replay`` asks
the ledger whether the platform was told something newer); then pruning drops it,
so ids that come and go (hosts, containers) do not grow the ledger forever.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "CLOSED_KEEP",
    "COLUMNS",
    "Incident",
    "LastTold",
    "extend",
    "incident_of",
    "last_told",
    "open_counts",
    "open_incidents",
    "record_delivery",
    "told",
    "told_many",
]


#: Seconds a closed incident is remembered after its resolve was told (30 days).
CLOSED_KEEP = 30 * 86400.0


@dataclass(frozen=True)
class Incident:
    """An incident the platform believes is open."""

    target: str
    key: str  #: the Kapacitor alert id
    level: str  #: last level the platform was told (never "OK" while open)
    fired_levels: Tuple[str, ...]  #: every non-OK level told since the incident opened, in order
    body: bytes  #: the last delivered event (Kapacitor JSON), to re-render
    opened_at: float  #: when the platform was first told (delivery time)
    told_at: float  #: last delivery time
    seq: int  #: outbox seq of that delivery


@dataclass(frozen=True)
class LastTold:
    """The last delivery of an id, open or closed (``level`` may be ``OK``)."""

    level: str
    seq: int
    told_at: float


#: The ledger's columns in :func:`incident_of` order (the same in both backends' tables).
COLUMNS = "target, key, level, fired_levels, body, opened_at, told_at, seq"


def _levels(text: str) -> Tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def extend(found: Optional[Sequence[Any]], level: str, now: float) -> Tuple[str, float]:
    """``(fired_levels, opened_at)`` after a non-OK delivery, from the row's ``(open,
    fired_levels, opened_at)`` (``None`` when the id was never told): a closed or new
    incident opens now with this level; an open one gains the level if new. Shared by
    both backends so their ledgers cannot drift apart."""
    if found is None or not found[0]:
        return level, now
    levels = _levels(found[1])
    return ",".join(levels if level in levels else levels + (level,)), float(found[2])


def incident_of(t: Sequence[Any]) -> Incident:
    """An :class:`Incident` from a row of :data:`COLUMNS`."""
    return Incident(
        target=t[0],
        key=t[1],
        level=t[2],
        fired_levels=_levels(t[3]),
        body=bytes(t[4]),
        opened_at=t[5],
        told_at=t[6],
        seq=t[7],
    )


def record_delivery(cur: sqlite3.Cursor, target: str, key: str, level: str, body: bytes, seq: int, now: float) -> None:
    """Update the ledger for a delivery; call inside the transaction that marks the row delivered.

    A non-OK level opens the incident or extends it (``fired_levels`` gains the level
    if new); OK closes it. A delivery older than what the ledger holds (a forced
    replay of an old dead letter) still counts: the platform was told it last.
    """
    found = cur.execute(
        "SELECT open, fired_levels, opened_at FROM ledger WHERE target = ? AND key = ?", (target, key)
    ).fetchone()
    if level == "OK":
        if found is None:
            cur.execute(
                "INSERT INTO ledger (target, key, open, level, fired_levels, body, opened_at, told_at, seq)"
                " VALUES (?, ?, 0, 'OK', '', ?, ?, ?, ?)",
                (target, key, body, now, now, seq),
            )
        else:
            cur.execute(
                "UPDATE ledger SET open = 0, level = 'OK', fired_levels = '', body = ?, told_at = ?, seq = ?"
                " WHERE target = ? AND key = ?",
                (body, now, seq, target, key),
            )
        return
    fired, opened_at = extend(found, level, now)
    cur.execute(
        "INSERT INTO ledger (target, key, open, level, fired_levels, body, opened_at, told_at, seq)"
        " VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (target, key) DO UPDATE SET open = 1, level = excluded.level,"
        " fired_levels = excluded.fired_levels, body = excluded.body, opened_at = excluded.opened_at,"
        " told_at = excluded.told_at, seq = excluded.seq",
        (target, key, level, fired, body, opened_at, now, seq),
    )


def open_incidents(conn: sqlite3.Connection, target: Optional[str] = None) -> List[Incident]:
    """Open incidents, oldest first."""
    sql = f"SELECT {COLUMNS} FROM ledger WHERE open = 1"
    args: List[Any] = []
    if target is not None:
        sql += " AND target = ?"
        args.append(target)
    sql += " ORDER BY opened_at, target, key"
    return [incident_of(r) for r in conn.execute(sql, args)]


def told(conn: sqlite3.Connection, target: str, key: str) -> Optional[Incident]:
    """The open incident of one id, if the platform believes it is firing."""
    return told_many(conn, target, [key]).get(key)


def told_many(conn: sqlite3.Connection, target: str, keys: Sequence[str]) -> Dict[str, Incident]:
    """The open incidents of several ids of one target, by id (a delivery batch's, in one read)."""
    out: Dict[str, Incident] = {}
    for i in range(0, len(keys), 500):
        chunk = list(keys[i : i + 500])
        marks = ",".join("?" * len(chunk))
        for found in conn.execute(
            f"SELECT {COLUMNS} FROM ledger WHERE open = 1 AND target = ? AND key IN ({marks})", (target, *chunk)
        ):
            incident = incident_of(found)
            out[incident.key] = incident
    return out


def last_told(conn: sqlite3.Connection, target: str, key: str) -> Optional[LastTold]:
    """The last delivery of one id, whether it opened or closed the incident."""
    found = conn.execute(
        "SELECT level, seq, told_at FROM ledger WHERE target = ? AND key = ?", (target, key)
    ).fetchone()
    return None if found is None else LastTold(found[0], found[1], found[2])


def open_counts(conn: sqlite3.Connection) -> Dict[str, int]:
    """Open incidents per target."""
    return {t: n for t, n in conn.execute("SELECT target, count(*) FROM ledger WHERE open = 1 GROUP BY target")}
