"""Claims and outcomes on PostgreSQL: heads claimed in batches with ``FOR UPDATE SKIP LOCKED``
under this replica's lease, handed out one by one, and finished under the key's queue-row lock;
outage coalescing of a target's backlog."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, List, Optional, Tuple

from ..store import Forwarded, Head, Row
from . import sql
from .base import _PgBase
from .coalesce import coalesce_keys, coalescible_keys
from .rows import _Claimed

#: Seconds the dispatcher's "which keys are coalescible" answer is reused (one query per round
#: and target would cost more than the coalescing saves).
COALESCE_RECHECK = 1.0
#: Seconds a "no resolve is ready" answer of a rate-limited target is reused (the dispatcher asks
#: every round, and under a storm a round follows every commit). A resolve this replica commits,
#: or a head it refreshes, asks again at once; one another replica commits waits at most this.
RESOLVES_RECHECK = 0.25
#: Seconds a "nothing ready" answer for a target is reused. The dispatcher peeks at every target
#: each round, and under a storm a round follows every commit: an idle target cost a claim
#: transaction per round. Rows this replica commits, finishes, coalesces, replays or resumes,
#: and another replica's accepts (NOTIFY), ask again at once; anything else waits at most this.
IDLE_RECHECK = 0.25


class _Claims(_PgBase):
    # -- dispatching ------------------------------------------------------------------

    def peek(self, target: str, now: float, *, resolves_first: bool = False) -> Tuple[Optional[Head], Optional[float]]:
        """A claimed, ready head of ``target`` (claiming a batch in the database when none is
        left here), or the next due time.

        With ``resolves_first`` (the target is rate limited) a ready resolve goes first: one
        claimed here already, else one claimed in the database before any trigger; and claims
        take one head at a time, so no batch of triggers waits here ahead of a resolve.
        """
        with self._lock:
            ready = self._ready.get(target)
            if ready and resolves_first:
                for item in ready:
                    if item.head.level == "OK":
                        return item.head, None
            elif ready:
                return ready[0].head, None
            idle = self._idle.get(target)
            if not ready and idle is not None and time.monotonic() < idle[0] and (idle[1] is None or now < idle[1]):
                return None, idle[1]
            # An answer read across a wake is stale (the wake may have come from the rows asked for).
            mark = self._wake_mark(target)
        if resolves_first and time.monotonic() >= self._no_resolves_until.get(target, 0.0):
            rows, _due = self._claim(sql.CLAIM_RESOLVES, target, now, 1, due=False)
            if rows:
                return self._keep_claimed(target, rows, front=True), None
            with self._lock:
                if self._wake_mark(target) == mark:
                    self._no_resolves_until[target] = time.monotonic() + RESOLVES_RECHECK
        if resolves_first:
            with self._lock:
                ready = self._ready.get(target)
                if ready:
                    return ready[0].head, None
        rows, due = self._claim(sql.CLAIM, target, now, 1 if resolves_first else self.claim_batch, due=True)
        if not rows:
            with self._lock:
                if self._wake_mark(target) == mark:
                    self._idle[target] = (time.monotonic() + IDLE_RECHECK, due)
            return None, due
        return self._keep_claimed(target, rows), None

    def _claim(self, statement: str, target: str, now: float, n: int, *, due: bool) -> Tuple[List[Any], Optional[float]]:
        """Claimed rows, and when there are none (and ``due``) the target's next due time."""
        with self._tx() as cur:
            rows = cur.execute(statement, {"target": target, "now": now, "n": n, "me": self.replica_id,
                                           "lease": self.lease}).fetchall()
            found = None if rows or not due else cur.execute(sql.NEXT_DUE, (target,)).fetchone()
        return rows, None if found is None or found[0] is None else float(found[0])

    def _keep_claimed(self, target: str, rows: List[Any], *, front: bool = False) -> Head:
        """Hold freshly claimed rows here in due order; the head to hand out first."""
        claimed = [self._claimed(r) for r in sorted(rows, key=lambda r: (r[9], r[0]))]
        with self._lock:
            ready = self._ready.setdefault(target, deque())
            if front:
                ready.extendleft(reversed(claimed))
            else:
                ready.extend(claimed)
            return ready[0].head

    @staticmethod
    def _claimed(r: Any) -> _Claimed:
        row = sql.to_row(r)
        head = Head(row.target, row.key, row.seq, row.next_attempt_at, row.level, row.received_at)
        fwd = None if r[13] is None else Forwarded(r[13], float(r[14]))
        return _Claimed(head, row, fwd)

    def coalescible(self, target: str, now: Optional[float] = None, *, limited: bool = False) -> List[str]:
        """Keys of ``target`` with a backlog of several pending rows and nothing in flight (on any
        replica). Asked without ``now`` (the dispatcher, every round) the answer is reused for
        :data:`COALESCE_RECHECK` seconds unless this replica saw a delivery fail meanwhile: a
        backlog builds over seconds, and :meth:`coalesce` re-checks under the queue-row locks."""
        explicit = now is not None
        now = self._clock() if now is None else now
        if not explicit:
            with self._lock:
                cached = self._coalescible_cache.get((target, limited))
            if cached is not None and time.monotonic() - cached[0] < COALESCE_RECHECK:
                return list(cached[1])
        with self._tx() as cur:
            keys = coalescible_keys(cur, target, now, limited=limited)
        with self._lock:
            self._coalescible_cache[(target, limited)] = (time.monotonic(), keys)
        return list(keys)

    def coalesce(self, target: str, mode: str, *, limited: bool = False, limit: int = 5000) -> int:
        """Supersede what :func:`bridge.coalesce.keep` drops for the coalescible keys of ``target``
        (see :mod:`.coalesce`: queue rows locked, keys in flight left alone); returns how many."""
        if mode == "off":
            return 0
        now = self._clock()
        with self._tx() as cur:
            keys = coalescible_keys(cur, target, now, limited=limited, limit=limit)
            gone = coalesce_keys(cur, target, keys, mode, now) if keys else 0
        with self._lock:
            self._coalescible_cache.pop((target, limited), None)
        if gone:
            self._wake([target])
        return gone

    def claim(self, head: Head) -> bool:
        """Hand out a head ``peek`` returned (it is already ours in the database)."""
        with self._lock:
            ready = self._ready.get(head.target)
            if not ready:
                return False
            for item in ready:
                if item.head is head:
                    ready.remove(item)
                    self._busy[head.seq] = item
                    return True
        return False

    def load(self, seq: int) -> Optional[Row]:
        with self._lock:
            item = self._busy.get(seq)
        if item is not None:
            return item.row
        with self._tx() as cur:
            assert cur.connection is not None
            return sql.load_row(cur.connection, seq)

    def forwarded(self, target: str, key: str) -> Optional[Forwarded]:
        with self._lock:
            for item in self._ready.get(target, ()):
                if item.head.key == key:
                    return item.forwarded
        with self._tx() as cur:
            found = cur.execute("SELECT fwd_level, fwd_received_at FROM oncall_queue WHERE target = %s AND key = %s",
                                (target, key)).fetchone()
        return None if found is None or found[0] is None else Forwarded(found[0], float(found[1]))

