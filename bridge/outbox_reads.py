"""Reads of the SQLite outbox: rows for delivery, the incident ledger and statistics.

Every read runs on a read-only connection of the calling thread (WAL lets it read
while the writer commits), never on the writer's connection, so a slow read never
delays a group commit. Mixed into :class:`bridge.outbox.Outbox`.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Set, Tuple

from .ledger import Incident, LastTold, open_counts, open_incidents
from .ledger import last_told as _last_told
from .ledger import told as _told
from .ledger import told_many as _told_many
from .store import _ROW_COLUMNS, Row, Stats, _row, _store_error

__all__ = ["OutboxReads"]


class OutboxReads:
    """Read-side methods of :class:`bridge.outbox.Outbox`."""

    if TYPE_CHECKING:
        path: str
        _clock: Callable[[], float]
        _lock: threading.Lock
        _local: threading.local
        _readers: List[sqlite3.Connection]
        _pending: Dict[str, int]
        _dead: Dict[str, int]
        _busy: Dict[Tuple[str, str], int]
        _failed_ops: Dict[str, int]
        _writable: bool
        _last_error: Optional[str]

    # -- the incident ledger -------------------------------------------------------

    def incidents(self, target: Optional[str] = None) -> List[Incident]:
        """Open incidents (what the platforms believe is firing), read from the file."""
        return open_incidents(self._reader(), target)

    def told(self, target: str, key: str) -> Optional[Incident]:
        """The open incident of ``key`` on ``target``, or None if the platform believes it is OK."""
        return _told(self._reader(), target, key)

    def told_many(self, target: str, keys: Sequence[str]) -> Dict[str, Incident]:
        """The open incidents of several ids of ``target``, by id (one read for a batch)."""
        return _told_many(self._reader(), target, keys)

    def last_told(self, target: str, key: str) -> Optional[LastTold]:
        """What the platform was last told of ``key`` (open or closed incident), or None."""
        return _last_told(self._reader(), target, key)

    def load(self, seq: int) -> Optional[Row]:
        """Read one row (body included) on this thread's read connection."""
        found = self._reader().execute(f"SELECT {_ROW_COLUMNS} FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return None if found is None else _row(found)

    def load_many(self, seqs: Sequence[int]) -> Dict[int, Row]:
        """Read several rows (bodies included) in one query on this thread's read connection."""
        out: Dict[int, Row] = {}
        reader = self._reader()
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for found in reader.execute(f"SELECT {_ROW_COLUMNS} FROM outbox WHERE seq IN ({marks})", tuple(chunk)):
                row = _row(found)
                out[row.seq] = row
        return out

    # -- statistics ------------------------------------------------------------------

    def stats(self) -> Stats:
        """Queue depth from the index; ages and open incidents from the file."""
        with self._lock:
            pending = {t: n for t, n in self._pending.items() if n}
            dead = {t: n for t, n in self._dead.items() if n}
            inflight: Dict[str, int] = {}
            for target, _key in self._busy:
                inflight[target] = inflight.get(target, 0) + 1
            failed = dict(self._failed_ops)
        now = self._clock()
        ages: Dict[str, float] = {}
        incidents: Dict[str, int] = {}
        try:
            for target in sorted(set(pending) | set(inflight)):
                oldest = self._oldest_received(target)
                if oldest is not None:
                    ages[target] = max(0.0, now - oldest)
            incidents = open_counts(self._reader())
        except sqlite3.Error:
            pass
        age = max(ages.values()) if ages else None
        return Stats(pending, inflight, dead, age, self._writable, self._last_error, ages, incidents, failed)

    def _oldest_received(self, target: str) -> Optional[float]:
        reader = self._reader()
        best: Optional[float] = None
        for state in ("pending", "inflight"):
            found = reader.execute(
                "SELECT received_at FROM outbox WHERE state = ? AND target = ? ORDER BY seq LIMIT 1", (state, target)
            ).fetchone()
            if found is not None and (best is None or found[0] < best):
                best = found[0]
        return best

    def targets_with_rows(self) -> Set[str]:
        """Targets that have pending or dead rows (to spot rows for removed targets)."""
        with self._lock:
            return {t for t, n in self._pending.items() if n} | {t for t, n in self._dead.items() if n}

    def _reader(self) -> sqlite3.Connection:
        conn: Optional[sqlite3.Connection] = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc, "open reader") from None
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn
