"""Operator commands (``queue``, ``replay``) on the PostgreSQL store, while replicas serve.

One short connection, no migration: the schema must already be there and not
newer than this code.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import psycopg

from ..errors import StoreError
from ..store import Row
from . import sql
from ..store_ops import Replayed
from .rows import _store_error, replay_rows
from .schema import SCHEMA_VERSION

__all__ = ["dead_letters", "open_admin", "queue_counts", "replay"]


def open_admin(dsn: str) -> "psycopg.Connection[Any]":
    """Connect and check the schema version (never creates or upgrades it)."""
    try:
        conn = psycopg.connect(dsn, connect_timeout=10)
        found = conn.execute("SELECT to_regclass('oncall_schema') IS NOT NULL").fetchone()
        version = conn.execute("SELECT max(version) FROM oncall_schema").fetchone() if found and found[0] else None
    except psycopg.Error as exc:
        raise _store_error(exc, "open") from None
    if version is None or version[0] is None:
        conn.close()
        raise StoreError("store postgres: no kapacitor-oncall schema in this database (has a bridge run with this config?)")
    if int(version[0]) > SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"store postgres: schema version {version[0]} is newer than this bridge understands ({SCHEMA_VERSION})")
    conn.commit()
    return conn


def queue_counts(conn: "psycopg.Connection[Any]") -> Dict[Tuple[str, str], int]:
    """Rows per (target, state)."""
    return {(t, s): int(n) for t, s, n in conn.execute(
        "SELECT target, state, count(*) FROM oncall_outbox GROUP BY target, state")}


def dead_letters(conn: "psycopg.Connection[Any]", target: Optional[str] = None, limit: int = 1000) -> List[Row]:
    """Dead rows, oldest first."""
    query = f"SELECT {sql.ROW_COLUMNS} FROM oncall_outbox o WHERE o.state = 'dead'"
    args: List[Any] = []
    if target is not None:
        query += " AND o.target = %s"
        args.append(target)
    query += " ORDER BY o.seq LIMIT %s"
    args.append(limit)
    return [sql.to_row(r) for r in conn.execute(query, args)]


def replay(
    conn: "psycopg.Connection[Any]", target: Optional[str] = None, key: Optional[str] = None, *, force: bool = False
) -> Replayed:
    """Order-safe replay of dead letters; serving replicas are woken by NOTIFY."""
    try:
        with conn.transaction():
            cur = conn.cursor()
            result = replay_rows(cur, target, key, time.time(), force=force)
            cur.execute("NOTIFY oncall_enqueue")
    except psycopg.Error as exc:
        raise _store_error(exc, "replay") from None
    return result
