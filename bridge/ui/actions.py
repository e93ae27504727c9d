"""The few writes the page may make that the outbox has no method for (yet): dropping a dead
letter. Done like the CLI's offline commands: one short transaction on a connection of our
own, then the live outbox is told to reload (``check_external``)."""

from __future__ import annotations

import sqlite3
from typing import Optional, Tuple

from ..errors import StoreError
from ..status import connect

__all__ = ["dead_row", "drop_dead"]


def dead_row(path: str, seq: int) -> Optional[Tuple[str, str]]:
    """``(target, key)`` of dead letter ``seq``, or ``None`` if there is no such dead row."""
    conn = connect(path)
    try:
        row = conn.execute("SELECT target, key FROM outbox WHERE seq = ? AND state = 'dead'", (seq,)).fetchone()
    finally:
        conn.close()
    return None if row is None else (str(row[0]), str(row[1]))


def drop_dead(path: str, seq: int) -> bool:
    """Delete dead letter ``seq``; False if it is not (or no longer) a dead letter."""
    # The serving bridge opened and validated this file; no quick_check for a one-row delete.
    try:
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"store {path}: cannot open ({exc})") from None
    try:
        conn.execute("BEGIN IMMEDIATE")
        count = conn.execute("DELETE FROM outbox WHERE seq = ? AND state = 'dead'", (seq,)).rowcount
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreError(f"drop of dead letter {seq} failed: {exc}") from None
    finally:
        conn.close()
    return bool(count)
