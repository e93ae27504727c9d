"""Reads on PostgreSQL: the incident ledger, key holds for keep-alive, and queue statistics."""

from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set

from ..errors import StoreError
from ..ledger import Incident, LastTold
from ..store import Stats
from . import sql
from .base import _PgBase


class _Reads(_PgBase):
    # -- the incident ledger -------------------------------------------------------------

    def incidents(self, target: Optional[str] = None) -> List[Incident]:
        with self._tx() as cur:
            assert cur.connection is not None
            return sql.open_incidents(cur.connection, target)

    def told(self, target: str, key: str) -> Optional[Incident]:
        with self._tx() as cur:
            assert cur.connection is not None
            return sql.told(cur.connection, target, key)

    def told_many(self, target: str, keys: Sequence[str]) -> Dict[str, Incident]:
        with self._tx() as cur:
            assert cur.connection is not None
            return sql.told_many(cur.connection, target, keys)

    def last_told(self, target: str, key: str) -> Optional[LastTold]:
        with self._tx() as cur:
            assert cur.connection is not None
            return sql.last_told(cur.connection, target, key)

    def idle(self, target: str, key: str) -> bool:
        with self._tx() as cur:
            found = cur.execute(sql.IDLE, (target, key)).fetchone()
        return found is None or bool(found[0])

    @contextlib.contextmanager
    def hold(self, target: str, keys: Iterable[str]) -> Iterator[List[str]]:
        """Keep deliveries of the idle ones among ``keys`` from starting (on every replica)."""
        wanted = sorted(set(keys))
        with self._tx() as cur:
            cur.execute(sql.ENSURE_QUEUES, (target, wanted))
            # A hold outlives its holder by at most a few leases (keep-alive holds for one re-post).
            held = [r[0] for r in cur.execute(sql.HOLD, {"me": self.replica_id, "target": target, "keys": wanted,
                                                         "hold": max(60.0, 4 * self.lease)})]
        try:
            yield held
        finally:
            if held:
                with self._tx() as cur:
                    cur.execute(sql.RELEASE_HOLD, (target, held, self.replica_id))
            self._wake([target])

    # -- statistics -----------------------------------------------------------------------

    def stats(self) -> Stats:
        """Queue depth across all replicas (cached for a second: every scrape is a query)."""
        now = time.monotonic()
        cached = self._stats_cache
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        pending: Dict[str, int] = {}
        inflight: Dict[str, int] = {}
        dead: Dict[str, int] = {}
        oldest: Optional[float] = None
        try:
            with self._tx(3.0) as cur:
                for target, state, count in cur.execute(sql.STATS):
                    {"pending": pending, "inflight": inflight, "dead": dead}[state][target] = int(count)
                found = cur.execute(sql.OLDEST).fetchone()
                oldest = None if found is None or found[0] is None else float(found[0])
        except StoreError as exc:
            self._last_error = str(exc)
            return Stats({}, {}, {}, None, False, str(exc))
        with self._lock:  # claimed here but not started: still waiting, as far as anyone can tell
            for target, ready in self._ready.items():
                if ready:
                    inflight[target] = inflight.get(target, 0) - len(ready)
                    pending[target] = pending.get(target, 0) + len(ready)
        inflight = {t: n for t, n in inflight.items() if n > 0}
        age = None if oldest is None else max(0.0, self._clock() - oldest)
        stats = Stats(pending, inflight, dead, age, self._writable, self._last_error)
        self._stats_cache = (now, stats)
        return stats

    def targets_with_rows(self) -> Set[str]:
        stats = self.stats()
        return {t for t, n in stats.pending.items() if n} | {t for t, n in stats.dead.items() if n}
