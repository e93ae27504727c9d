"""What the operator's tools need from the SQLite outbox beyond delivery: silences, the
status page and dropping a dead letter (the :class:`bridge.backend.Store` methods that
:class:`bridge.pg.PgOutbox` implements on PostgreSQL).

Reads use a read-only connection (never the writer's), writes go through the writer's
transaction (:meth:`bridge.outbox.Outbox.transact`), so they cannot race its own.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional

from . import silences_sqlite
from .errors import StoreError
from .silences import Released, Silence
from .status import Snapshot, connect, snapshot

__all__ = ["SqliteOperator"]


class SqliteOperator:
    """Mixed into :class:`bridge.outbox.Outbox`."""

    #: The held rows' mark after a check that found nothing to release (see ``held_mark``).
    _release_idle: Optional[silences_sqlite.Mark] = None

    if TYPE_CHECKING:
        path: str
        _clock: Callable[[], float]

        def transact(self, fn: Callable[[sqlite3.Cursor], Any], timeout: Optional[float] = None) -> Any: ...
        def _reader(self) -> sqlite3.Connection: ...

    # -- silences ------------------------------------------------------------------

    def watch_silences(self, changed: Callable[[], None]) -> None:
        """Changes come through this process (``refresh``) or the CLI (read within a second)."""

    def list_silences(self, *, include_ended: bool = False, now: Optional[float] = None) -> List[Silence]:
        try:
            return silences_sqlite.list_silences(self._reader(), include_ended=include_ended,
                                                  now=self._clock() if now is None else now)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: reading silences failed ({exc})") from None

    def add_silence(self, silence: Silence) -> Silence:
        """Store a silence made by :func:`bridge.silences.new_silence`."""
        made: Silence = self.transact(lambda cur: silences_sqlite.insert(cur, silence))
        return made

    def expire_silence(self, silence_id: str, now: Optional[float] = None) -> Silence:
        """End a silence now; raises :class:`~bridge.silences.SilenceError` for an unknown or ended one."""
        at = self._clock() if now is None else now
        ended: Silence = self.transact(lambda cur: silences_sqlite.expire(cur, silence_id, at))
        return ended

    def release_silences(self, now: Optional[float] = None) -> List[Released]:
        """Release the ids no silence holds any more (the write lock only when there are some)."""
        now = self._clock() if now is None else now
        try:
            reader = self._reader()
            mark = silences_sqlite.held_mark(reader, now)
            if mark == self._release_idle:
                return []  # nothing changed since a check that found nothing: skip reading every body
            if not silences_sqlite.pending_release(reader, now):
                self._release_idle = mark
                return []
            self._release_idle = None
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: reading silences failed ({exc})") from None
        released: List[Released] = self.transact(lambda cur: silences_sqlite.release(cur, now))
        return released

    # -- the status page -----------------------------------------------------------

    def status(self, targets: Mapping[str, str], *, listen: str, now: Optional[float] = None) -> Snapshot:
        """The page's snapshot, read in one transaction on a read-only connection of its own."""
        conn = connect(self.path)
        try:
            return snapshot(conn, targets, path=self.path, listen=listen, now=self._clock() if now is None else now)
        finally:
            conn.close()

    def drop_dead(self, seq: int) -> bool:
        """Delete dead letter ``seq``; False if it is not (or no longer) a dead letter."""
        count: int = self.transact(
            lambda cur: cur.execute("DELETE FROM outbox WHERE seq = ? AND state = 'dead'", (seq,)).rowcount
        )
        return bool(count)
