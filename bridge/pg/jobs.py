"""Work that runs on one replica at a time (expiry, prune; the others ask :meth:`holds`), the
keeper thread that renews leases, resumes expired ones and takes singletons, the LISTEN thread
that wakes the dispatcher, replay and the health probe."""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

import psycopg

from ..errors import StoreError
from ..ledger import CLOSED_KEEP
from ..store_ops import Replayed
from . import sql
from .base import SINGLETON_JOBS, MakeResolve, _PgBase, log
from .rows import replay_rows
from .silences import CHANNEL as SILENCES_CHANNEL


#: Least seconds between two dispatcher wakes for other replicas' commits.
WAKE_GAP = 0.05


class _Jobs(_PgBase):
    # -- housekeeping -------------------------------------------------------------------

    def _singleton(self, name: str, cur: "psycopg.Cursor[Any]") -> bool:
        """Inside a transaction: True (and the lease row locked until commit) if we hold ``name``."""
        return cur.execute(sql.HOLD_SINGLETON, (name, self.replica_id)).fetchone() is not None

    def fire_expiries(self, make: MakeResolve, wait: bool = False) -> List[Tuple[int, str, str]]:
        """Synthetic resolves for due auto-resolve timers; only on the replica holding ``expiry``."""
        now = self._clock()
        fired: List[Tuple[int, str, str]] = []
        with self._tx() as cur:
            if not self._singleton("expiry", cur):
                return []
            for target, key in cur.execute(sql.DUE_EXPIRIES, (now,)).fetchall():
                cur.execute(sql.LOCK_QUEUE, (target, key))  # queue row before expiry row, like inserts
                found = cur.execute(sql.TAKE_EXPIRY, (target, key, now)).fetchone()
                if found is None:
                    continue
                body = make(target, key, bytes(found[0]), now)
                if body is None:
                    continue
                seq = cur.execute(sql.ENQUEUE, (target, key, "OK", body, now, None, True, None)).fetchone()
                assert seq is not None
                fired.append((int(seq[0]), target, key))
        if fired:
            self._wake({target for _seq, target, _key in fired})
        return fired

    def prune(self, keep: int, forget_before: Optional[float] = None, wait: bool = False) -> None:
        """Bound the delivered/suppressed history (dead letters stay); only on the ``prune`` holder."""
        with self._tx() as cur:
            if not self._singleton("prune", cur):
                return
            for state in ("delivered", "suppressed"):
                cur.execute(sql.PRUNE, (state, 5000, keep))
            if forget_before is not None:
                cur.execute(sql.FORGET, (forget_before,))
            cur.execute(sql.DROP_IDLE_QUEUES)
            cur.execute(sql.PRUNE_CLOSED, (self._clock() - CLOSED_KEEP, 5000))

    def check_external(self, wait: bool = False) -> None:
        """Other processes commit to the same database continuously; the keeper and NOTIFY cover it."""

    def replay(self, target: Optional[str] = None, key: Optional[str] = None, *, force: bool = False) -> Replayed:
        """Dead letters back to pending with fresh attempts and age, order-safe (see
        :func:`bridge.pg.rows.replay_rows`)."""
        with self._tx(durable=True) as cur:
            result = replay_rows(cur, target, key, self._clock(), force=force)
        self._wake()
        return result

    def probe(self, timeout: float = 5.0) -> bool:
        """A real commit right now (it also tells the others this replica is alive)."""
        try:
            with self._tx(timeout, durable=True) as cur:
                cur.execute("UPDATE oncall_replica SET seen_at = oncall_now() WHERE id = %s", (self.replica_id,))
            return True
        except StoreError:
            return False

    # -- the keeper: leases, singletons, resumption ---------------------------------------------

    def _run_keeper(self) -> None:
        interval = max(0.2, min(2.0, self.lease / 4))
        while not self._stop.wait(interval):
            try:
                self.keep()
            except StoreError as exc:
                with self._lock:
                    self._held.clear()
                log.warning("pg.keeper_failed", error=str(exc))
            except Exception:  # noqa: BLE001 - the keeper must outlive a bug
                log.error("pg.keeper_crashed", exc_info=True)

    def keep(self) -> None:
        """One keeper round: renew our leases (and our ``seen_at``: the page shows a replica that
        stopped renewing), resume expired ones, take or renew singletons."""
        started = time.monotonic()
        with self._tx() as cur:
            cur.execute(sql.RENEW, (self.lease, self.replica_id))
            cur.execute("UPDATE oncall_replica SET seen_at = oncall_now() WHERE id = %s", (self.replica_id,))
            resumed = cur.execute(sql.RESUME_EXPIRED, (self._clock(),)).fetchone()
            held = {r[0] for name in SINGLETON_JOBS for r in cur.execute(
                sql.TAKE_SINGLETON, {"me": self.replica_id, "lease": self.lease, "name": name}).fetchall()}
        n = int(resumed[0]) if resumed else 0
        with self._lock:
            # Believed held for less than the lease, counted from before the round started.
            until = started + self.lease * 0.8
            self._held = {name: until for name in held}
            self.resumed += n
        if n:
            log.warning("pg.resumed", rows=n, hint="another replica's lease ran out; delivering its rows")
            self._wake()

    def _run_listener(self) -> None:
        """Wake the dispatcher when another replica accepts alerts, and the silencer when
        silences change anywhere (LISTEN/NOTIFY).

        Our own accepts are skipped (the writer woke the dispatcher already), and accept wakes
        are at least :data:`WAKE_GAP` apart: under a storm every replica commits a hundred times
        a second, and a dispatcher round per commit of every other replica is a claim query each.
        """
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute("LISTEN oncall_enqueue")
                    conn.execute(f"LISTEN {SILENCES_CHANNEL}")
                    while not self._stop.is_set():
                        if not self._others_accepted(conn.notifies(timeout=0.5, stop_after=1)):
                            continue
                        self._wake()
                        # Accepts arriving in the next WAKE_GAP seconds are one more wake at its end.
                        if self._others_accepted(conn.notifies(timeout=WAKE_GAP)):
                            self._wake()
            except psycopg.Error:
                self._stop.wait(1.0)

    def _others_accepted(self, notes: Iterable["psycopg.Notify"]) -> bool:
        """Whether ``notes`` tell of another replica's accepts; silence changes are passed on at once."""
        others = False
        for note in notes:
            if note.channel == SILENCES_CHANNEL:
                self._silences_changed()
            elif note.payload != self.replica_id:
                others = True
        return others

    def holds(self, job: str) -> bool:
        """Whether this replica holds the singleton ``job`` (with margin before its lease ends)."""
        with self._lock:
            until = self._held.get(job)
        return until is not None and time.monotonic() < until

    def singletons(self) -> Dict[str, bool]:
        return {name: self.holds(name) for name in SINGLETON_JOBS}

    def reachable(self) -> bool:
        return self._reachable
