"""State every part of :class:`~bridge.pg.outbox.PgOutbox` shares: the pool, the locks, and the
one transaction helper that maps database errors to :class:`~bridge.errors.StoreError`."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import psycopg
import psycopg_pool

from ..errors import StoreError
from ..log import get_logger
from ..store import Stats
from . import sql
from .operator import RELEASE_JOB
from .rows import _Claimed, _store_error

log = get_logger("bridge.pg")

Done = Callable[[Any, Optional[BaseException]], None]
MakeResolve = Callable[[str, str, bytes, float], Optional[bytes]]
#: Work that must happen on one replica at a time.
SINGLETON_JOBS = ("expiry", "prune", "heartbeat", "keepalive", "reconcile", RELEASE_JOB)
#: Writer threads per replica unless ``[store] writers`` says otherwise. One: the bridge's event
#: loop, not the WAL flush, bounds accepting (a flush takes ~0.2 ms here), and a second lane
#: only splits the batches, so the database commits twice as often and the loop loses the core
#: to the extra wake-ups. Measured interleaved (11 pairs, one replica): one lane 4,296/s at
#: 161 µs bridge and 65 µs database CPU per alert, two lanes 3,624/s at 221 and 110 µs.
WRITER_LANES = 1


@dataclass(eq=False)
class _Lane:
    """One writer thread's queue and its own autocommit connection (opened on first use, again
    after a failure). An id always takes the same lane, so its posts commit in arrival order and
    the lanes never wait on each other's rows."""

    queue: "queue.SimpleQueue[Any]" = field(default_factory=queue.SimpleQueue)
    conn: Optional["psycopg.Connection[Any]"] = None


class _PgBase:
    """The shared state; the parts (writer, claims, jobs, reads) are mixins over it."""

    def __init__(
        self,
        dsn: str,
        *,
        replica_id: str,
        lease: float = 15.0,
        pool_size: int = 8,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
        commit_timeout: float = 10.0,
        claim_batch: int = 8,
        writers: int = WRITER_LANES,
    ) -> None:
        self._dsn = dsn
        self.replica_id = replica_id
        self.lease = lease
        self.commit_timeout = commit_timeout
        self.claim_batch = claim_batch
        self.recovered_inflight = 0
        #: Rows this replica took over after another's lease ran out.
        self.resumed = 0
        #: Posts that were already stored (another replica or a retry had them).
        self.duplicates = 0
        self._clock = clock
        self._on_change = on_change
        #: Called by the listener when silences changed anywhere (see PgOperator.watch_silences).
        self._silences_changed: Callable[[], None] = lambda: None
        self._pool_size = pool_size
        self._pool: Optional["psycopg_pool.ConnectionPool[Any]"] = None
        self._lanes = [_Lane() for _ in range(max(1, writers))]
        self._lock = threading.Lock()
        self._ready: Dict[str, Deque[_Claimed]] = {}
        self._busy: Dict[int, _Claimed] = {}
        self._held: Dict[str, float] = {}
        self._writers: List[threading.Thread] = []
        self._threads: List[threading.Thread] = []
        #: Outcome batches for the finisher thread (see :mod:`.batches`).
        self._finishing: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._finisher: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._closed = True
        self._writable = True
        self._reachable = True
        self._last_error: Optional[str] = None
        self._stats_cache: Optional[Tuple[float, Stats]] = None
        #: target -> monotonic time until which peek(resolves_first) skips the resolves query.
        self._no_resolves_until: Dict[str, float] = {}
        #: target -> (monotonic time until which, its next due time): peek answers "nothing ready"
        #: without a claim transaction (see :meth:`_wake` and ``claims.IDLE_RECHECK``).
        self._idle: Dict[str, Tuple[float, Optional[float]]] = {}
        #: Wakes so far, per target and for all: an answer read before a wake is not kept.
        self._wakes: Dict[str, int] = {}
        self._wakes_all = 0
        self._coalescible_cache: Dict[Tuple[str, bool], Tuple[float, List[str]]] = {}

    def _wake(self, targets: Optional[Iterable[str]] = None, resolves: Iterable[str] = ()) -> None:
        """Something may have become claimable for ``targets`` (all when None): forget their
        "nothing ready" answers, and the "no resolve ready" ones of ``resolves`` (targets that
        may have a resolve head now), then wake the dispatcher. Not under ``_lock`` (it takes it)."""
        with self._lock:
            if targets is None:
                self._wakes_all += 1
                self._idle.clear()
            else:
                for target in targets:
                    self._wakes[target] = self._wakes.get(target, 0) + 1
                    self._idle.pop(target, None)
            for target in resolves:
                self._no_resolves_until.pop(target, None)
        self._on_change()

    def _wake_mark(self, target: str) -> Tuple[int, int]:
        """Under ``_lock``: the wakes so far that concern ``target``."""
        return self._wakes_all, self._wakes.get(target, 0)

    @contextlib.contextmanager
    def _tx(self, timeout: Optional[float] = None, durable: bool = False) -> Iterator["psycopg.Cursor[Any]"]:
        """One transaction on a pooled connection; database errors become StoreError.

        ``durable``: the commit waits for the WAL flush (accepted alerts, outcomes, operator
        actions, rate-limit tokens, the health probe). Everything else is bookkeeping whose
        loss in a *database* crash only means a row is delivered once more (claims, leases).
        """
        if self._pool is None:
            raise StoreError("store postgres: not open")
        try:
            with self._pool.connection(timeout or self.commit_timeout) as conn:
                with conn.transaction():
                    cur = conn.cursor()
                    if durable:
                        cur.execute("SET LOCAL synchronous_commit = on")
                    yield cur
        except psycopg_pool.PoolTimeout as exc:
            self._reachable = False
            raise _store_error(exc, "connect") from None
        except psycopg.OperationalError as exc:
            self._reachable = False
            raise _store_error(exc, "query") from None
        except psycopg.Error as exc:
            raise _store_error(exc, "query") from None
        self._reachable = True

    def _release_own(self) -> int:
        """Rows claimed by this replica id (an earlier life, or never started) back to pending."""
        with self._lock:
            self._ready.clear()
        with self._tx() as cur:
            rows = cur.execute(sql.RELEASE_OWN, (self.replica_id,)).fetchall()
            for target, key, seq in rows:
                cur.execute(sql.BACK_TO_PENDING, (seq,))
                cur.execute(sql.REFRESH, (target, key))
        return len(rows)
