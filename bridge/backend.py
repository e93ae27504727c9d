"""The store seam: what delivery, the server and the CLI need from a durable outbox.

Two implementations satisfy :class:`Store`: :class:`bridge.outbox.Outbox` (SQLite,
one process, the default) and :class:`bridge.pg.PgOutbox` (PostgreSQL, any number
of replicas). ``mypy --strict`` proves both conform (see the assignments at the
bottom). :func:`open_backend` picks one from ``[store] backend``.

A backend may also be a :class:`Cluster` (several replicas share it): it then has
a replica id, singleton jobs it may or may not hold, and a database that may be
unreachable; ``/healthz`` and ``/metrics`` show those.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ContextManager,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Set,
    Tuple,
    runtime_checkable,
)

from .ledger import Incident, LastTold
from .store import Forwarded, Head, Outcome, OutcomeDone, Row, Stats
from .outbox_ops import Ticket
from .silences import Released, Silence
from .status import Snapshot
from .store_ops import Replayed

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Backend", "Cluster", "Limiters", "Store", "open_backend"]

Done = Callable[[Any, Optional[BaseException]], None]
MakeResolve = Callable[[str, str, bytes, float], Optional[bytes]]


class Store(Protocol):
    """The durable outbox and incident ledger, as the rest of the bridge uses them."""

    commit_timeout: float
    recovered_inflight: int

    # lifecycle
    def open(self) -> Any: ...
    def close(self, timeout: float = 10.0) -> None: ...
    @property
    def writer_alive(self) -> bool: ...

    # accepting: ``done(seq, None)`` only once the row is durable; ``also`` targets (an HA
    # fan-out's members) get the same event in the same commit, all rows or none
    def enqueue_with(
        self,
        done: Done,
        target: str,
        key: str,
        level: str,
        body: bytes,
        *,
        expire_after: Optional[float] = None,
        received_at: Optional[float] = None,
        synthetic: bool = False,
        also: Sequence[str] = (),
    ) -> Ticket: ...
    def enqueue(
        self,
        target: str,
        key: str,
        level: str,
        body: bytes,
        *,
        expire_after: Optional[float] = None,
        received_at: Optional[float] = None,
        synthetic: bool = False,
    ) -> "Future[int]": ...

    # dispatching: only heads of (target, key) queues, at most one in flight per key
    def peek(
        self, target: str, now: float, *, resolves_first: bool = False
    ) -> Tuple[Optional[Head], Optional[float]]: ...
    def coalescible(self, target: str, now: Optional[float] = None, *, limited: bool = False) -> List[str]: ...
    def coalesce(self, target: str, mode: str, *, limited: bool = False, limit: int = 5000) -> int: ...
    def claim(self, head: Head) -> bool: ...
    def finish(
        self,
        head: Head,
        state: str,
        *,
        attempts: Optional[int] = None,
        next_at: Optional[float] = None,
        error: Optional[str] = None,
        status: Optional[int] = None,
    ) -> None: ...
    def forwarded(self, target: str, key: str) -> Optional[Forwarded]: ...
    def load(self, seq: int) -> Optional[Row]: ...
    # batches for the delivery engine: one store call per batch, not per delivery
    def load_many(self, seqs: Sequence[int]) -> Dict[int, Row]: ...
    def finish_many(self, outcomes: Sequence[Outcome], done: OutcomeDone) -> None: ...

    # the incident ledger
    def incidents(self, target: Optional[str] = None) -> List[Incident]: ...
    def told(self, target: str, key: str) -> Optional[Incident]: ...
    def told_many(self, target: str, keys: Sequence[str]) -> Dict[str, Incident]: ...

    def last_told(self, target: str, key: str) -> Optional[LastTold]: ...
    def idle(self, target: str, key: str) -> bool: ...
    def hold(self, target: str, keys: Iterable[str]) -> ContextManager[List[str]]: ...

    # housekeeping and operations
    def fire_expiries(self, make: MakeResolve, wait: bool = False) -> List[Tuple[int, str, str]]: ...
    def prune(self, keep: int, forget_before: Optional[float] = None, wait: bool = False) -> None: ...
    def check_external(self, wait: bool = False) -> None: ...
    def replay(self, target: Optional[str] = None, key: Optional[str] = None, *, force: bool = False) -> Replayed: ...
    def probe(self, timeout: float = 5.0) -> bool: ...
    def stats(self) -> Stats: ...
    def targets_with_rows(self) -> Set[str]: ...
    def drop_dead(self, seq: int) -> bool: ...

    # silences (the rules are bridge.silences'; every replica sees the same ones)
    def watch_silences(self, changed: Callable[[], None]) -> None: ...
    def list_silences(self, *, include_ended: bool = False, now: Optional[float] = None) -> List[Silence]: ...
    def add_silence(self, silence: Silence) -> Silence: ...
    def expire_silence(self, silence_id: str, now: Optional[float] = None) -> Silence: ...
    def release_silences(self, now: Optional[float] = None) -> List[Released]: ...

    # the status page: read off the accept path (own read-only connection, or the pool)
    def status(self, targets: Mapping[str, str], *, listen: str, now: Optional[float] = None) -> Snapshot: ...


@runtime_checkable
class Cluster(Protocol):
    """A store shared by replicas: who we are, which singleton jobs we hold, is the database up."""

    replica_id: str
    resumed: int
    duplicates: int

    def singletons(self) -> Dict[str, bool]: ...
    def holds(self, job: str) -> bool: ...
    def reachable(self) -> bool: ...


class Limiters(Protocol):
    """Per-target rate limits as delivery uses them (in-process or shared by replicas)."""

    def wait_time(self, target: str) -> float: ...
    def try_acquire(self, target: str) -> bool: ...


@dataclass
class Backend:
    """What :func:`open_backend` hands the service: the store, and for a cluster its
    shared rate limiters (``None``: delivery keeps its in-process ones)."""

    store: Store
    limiters: Optional[Limiters]
    cluster: Optional[Cluster]


def open_backend(config: "Config", *, on_change: Callable[[], None] = lambda: None) -> Backend:
    """The store chosen by ``[store] backend`` (not opened yet: :meth:`Store.open` does that)."""
    if config.store.backend == "postgres":
        from .pg import PgOutbox, SharedRateLimiters

        assert config.store.dsn is not None  # the schema requires it for this backend
        box = PgOutbox(
            config.store.dsn,
            replica_id=config.store.replica_id or _default_replica_id(config),
            lease=config.store.lease,
            pool_size=config.store.pool_size,
            writers=config.store.writers,
            on_change=on_change,
            # One claim transaction per batch of ready heads: about what the delivery engine
            # can have in flight for one target (its share of the workers).
            claim_batch=max(8, min(64, config.delivery.workers // 2)),
        )
        limits = {name: t.rate_limit for name, t in config.targets.items()}
        return Backend(box, SharedRateLimiters(box, limits), box)
    from .outbox import Outbox

    return Backend(Outbox(config.store.path, on_change=on_change), None, None)


def _default_replica_id(config: "Config") -> str:
    """``host:port``: unique per listener on a host, and the same after a restart, so a
    restarted replica takes back its own in-flight rows at once instead of after the lease."""
    import socket

    return f"{socket.gethostname()}:{config.server.port}"


if TYPE_CHECKING:  # mypy proves both implementations satisfy the protocols.
    from .outbox import Outbox as _Sqlite
    from .pg import PgOutbox as _Pg

    def _conforms(a: _Sqlite, b: _Pg) -> Tuple[Store, Store, Cluster]:
        return a, b, b
