"""What the operator's tools need from the PostgreSQL store beyond delivery: silences,
the status page and dropping a dead letter (the :class:`bridge.backend.Store` methods
that :class:`bridge.outbox.Outbox` implements on SQLite).

Everything runs on pooled connections, never the writer's; operator writes wait for
the WAL flush. The release of silenced rows is a singleton job (``silences``): only the
replica holding its lease runs it, inside a transaction that locks the lease row, so two
replicas never release the same id twice, and the job moves when its replica dies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, Iterable, List, Mapping, Optional

import psycopg

from ..silences import Released, Silence
from ..status import Snapshot
from . import silences as pg_silences
from .status import begin_read, snapshot

__all__ = ["PgOperator", "RELEASE_JOB"]

#: The singleton job that releases silenced rows.
RELEASE_JOB = "silences"
#: Seconds a read for the page, the API or the silencer, or an operator's change (a silence,
#: a dropped dead letter), waits for a pooled connection: with the database down, a person
#: gets "store unavailable" in seconds, not after the whole commit timeout.
READ_TIMEOUT = 5.0


class PgOperator:
    """Mixed into :class:`bridge.pg.PgOutbox`."""

    #: The release pass's fingerprint after it last found nothing to release (see held_mark).
    _release_idle: Optional[pg_silences.Mark] = None

    if TYPE_CHECKING:
        replica_id: str
        _clock: Callable[[], float]
        _silences_changed: Callable[[], None]

        def _wake(self, targets: Optional[Iterable[str]] = None) -> None: ...

        def _tx(self, timeout: Optional[float] = None,
                durable: bool = False) -> ContextManager["psycopg.Cursor[Any]"]: ...
        def _singleton(self, name: str, cur: "psycopg.Cursor[Any]") -> bool: ...
        def singletons(self) -> Dict[str, bool]: ...

    # -- silences ------------------------------------------------------------------

    def watch_silences(self, changed: Callable[[], None]) -> None:
        """``changed()`` runs (in the listener thread; it must not block) whenever any replica or
        the CLI adds or expires a silence, so this replica holds by it at once."""
        self._silences_changed = changed

    def list_silences(self, *, include_ended: bool = False, now: Optional[float] = None) -> List[Silence]:
        with self._tx(READ_TIMEOUT) as cur:
            return pg_silences.list_silences(cur, include_ended=include_ended,
                                             now=self._clock() if now is None else now)

    def add_silence(self, silence: Silence) -> Silence:
        """Store a silence made by :func:`bridge.silences.new_silence` (every replica sees it)."""
        with self._tx(READ_TIMEOUT, durable=True) as cur:
            return pg_silences.insert(cur, silence)

    def expire_silence(self, silence_id: str, now: Optional[float] = None) -> Silence:
        """End a silence now; raises :class:`~bridge.silences.SilenceError` for an unknown or ended one."""
        with self._tx(READ_TIMEOUT, durable=True) as cur:
            return pg_silences.expire(cur, silence_id, self._clock() if now is None else now)

    def release_silences(self, now: Optional[float] = None) -> List[Released]:
        """Release the ids no silence holds any more; only on the replica holding the job."""
        now = self._clock() if now is None else now
        with self._tx() as cur:
            if not self._singleton(RELEASE_JOB, cur):
                self._release_idle = None  # another replica releases meanwhile: look afresh when back
                return []
            mark = pg_silences.held_mark(cur, now)
            if mark == self._release_idle:
                return []  # nothing changed since a pass that found nothing: skip reading every body
            released = pg_silences.release(cur, now)
        self._release_idle = None if released else mark
        sent = {t for t, _k, outcome in released if outcome == "sent"}
        if sent:
            self._wake(sent)
        return released

    # -- the status page -----------------------------------------------------------

    def status(self, targets: Mapping[str, str], *, listen: str, now: Optional[float] = None) -> Snapshot:
        """The whole cluster's page, in one read-only transaction on a pooled connection."""
        now = self._clock() if now is None else now
        jobs = [name for name, held in self.singletons().items() if held]
        with self._tx(READ_TIMEOUT) as cur:
            begin_read(cur)
            return snapshot(cur, targets, listen=listen, replica_id=self.replica_id, jobs=jobs, now=now)

    def drop_dead(self, seq: int) -> bool:
        """Delete dead letter ``seq``; False if it is not (or no longer) a dead letter."""
        with self._tx(READ_TIMEOUT, durable=True) as cur:
            return cur.execute("DELETE FROM oncall_outbox WHERE seq = %s AND state = 'dead'", (seq,)).rowcount > 0
