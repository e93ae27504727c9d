"""What the bridge's configuration holds: one frozen dataclass per section.

Each field is the declaration of one key (:func:`bridge.schema.setting`: type,
default, meaning), so validation, ``check-config``, ``config-reference`` and
``docs/configuration.md`` all read the same source. Loading a file into these
values is :mod:`bridge.config`'s job.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple, Type

from .errors import ConfigError
from .event import AlertEvent
from .schema import DURATION, FILE, INTEGER, LISTEN, NONEMPTY, RATE_LIMIT, STRING_MAP, URL, Kind, parse_listen, setting
from .targets.base import RateLimit

__all__ = [
    "ARRAYS",
    "COALESCE",
    "Config",
    "DEFAULT_LISTEN",
    "DeliveryConfig",
    "HeartbeatConfig",
    "KapacitorConfig",
    "METHOD",
    "NAME",
    "ServerConfig",
    "StoreConfig",
    "TargetConfig",
    "default_config",
    "section",
    "sections",
]

DEFAULT_LISTEN = "127.0.0.1:9095"

#: Target names are URL path segments (``/alerts/<name>``) and metric labels.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, "must be a non-empty string")
    if not _NAME.match(value):
        raise ConfigError(where, "use letters, digits, '_', '-', '.' (it is a URL path segment)")
    return value


def _method(value: Any, where: str) -> str:
    if not isinstance(value, str) or value.upper() not in ("GET", "POST"):
        raise ConfigError(where, "must be GET or POST")
    return value.upper()


def _coalesce(value: Any, where: str) -> str:
    from .coalesce import MODES

    if not isinstance(value, str) or value not in MODES:
        raise ConfigError(where, f"must be one of {', '.join(repr(m) for m in MODES)}")
    return value


NAME = Kind("name", _name, '"oncall"')
METHOD = Kind("GET or POST", _method, '"GET"')
COALESCE = Kind("worst-then-latest, latest or off", _coalesce, '"latest"')


def section(cls: Type[Any]) -> Any:
    """A :class:`Config` field holding a ``[name]`` table read with ``cls``'s declarations."""
    return field(default_factory=cls, metadata={"section": cls})


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where Kapacitor posts, and who may post."""

    listen: str = setting(
        LISTEN,
        "Address to listen on (`host:port`, `[v6]:port`, `:port` for all interfaces). "
        "A non-loopback address requires `token` (or `serve --insecure`).",
        DEFAULT_LISTEN,
    )
    token: Optional[str] = setting(
        NONEMPTY,
        "Bearer token every `POST /alerts/…` must carry (`Authorization: Bearer <token>`). "
        "Unset: no authentication (loopback only).",
        None,
        secret=True,
    )
    max_body_bytes: int = setting(INTEGER, "Larger request bodies are refused with 413.", 1048576, minimum=1024)

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can connect; otherwise a token is required."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: the durable outbox (SQLite file, or PostgreSQL for several replicas)."""

    path: str = setting(NONEMPTY, "SQLite outbox file (WAL, fsync per commit group), created with mode 0600.", "kapacitor-oncall.db")
    keep_delivered: int = setting(
        INTEGER, "Delivered and suppressed rows kept for `queue` statistics; dead letters are always kept.", 10000, minimum=0
    )
    backend: str = setting(
        NONEMPTY,
        "`sqlite` (one process, the file at `path`) or `postgres` (any number of replicas sharing the database at `dsn`).",
        "sqlite",
        choices=("sqlite", "postgres"),
    )
    dsn: Optional[str] = setting(
        NONEMPTY,
        "PostgreSQL connection (libpq DSN or `postgresql://` URL) when `backend = \"postgres\"`; "
        "write `env:BRIDGE_PG_DSN` or `file:…` to keep the password out of the file. Never logged.",
        None,
        secret=True,
    )
    replica_id: Optional[str] = setting(
        NONEMPTY,
        "PostgreSQL: this replica's name in leases, `/healthz` and `/metrics`; unset: `<hostname>:<port>`. "
        "Must differ between replicas and stay the same across restarts.",
        None,
    )
    lease: float = setting(
        DURATION,
        "PostgreSQL: how long a replica's claim on an in-flight row or a singleton job lasts without renewal; "
        "a killed replica's work moves to another after this.",
        15.0,
        positive=True,
    )
    pool_size: int = setting(INTEGER, "PostgreSQL: connections per replica.", 8, minimum=2, maximum=100)
    writers: int = setting(
        INTEGER,
        "PostgreSQL: accept connections per replica, each committing its own batches (an id always uses the "
        "same one, so its posts keep their order). One commits the largest batches, which costs the bridge "
        "and the database the least CPU per alert; more let a batch gather while another waits on a slow "
        "disk's WAL flush.",
        1,
        minimum=1,
        maximum=8,
    )


@dataclass(frozen=True)
class DeliveryConfig:
    """``[delivery]``: retry policy and worker pool (durations in seconds once loaded)."""

    timeout: float = setting(
        DURATION,
        "Total time one delivery attempt may take, connect to last byte (a target may override it with its own `timeout`).",
        10.0,
        positive=True,
    )
    backoff_initial: float = setting(DURATION, "First wait between attempts; doubles (with jitter) per failure.", 1.0, positive=True)
    backoff_max: float = setting(
        DURATION, "Longest wait between attempts; a platform's Retry-After wins when given.", 300.0, positive=True
    )
    max_age: float = setting(
        DURATION, "Still failing after this long: dead letter (see `queue --dead`, `replay`).", 86400.0, positive=True
    )
    repeat_interval: float = setting(
        DURATION, "The same id at the same level is forwarded at most once per interval (\"0\": always).", 3600.0
    )
    workers: int = setting(
        INTEGER, "Concurrent delivery attempts (different ids; one id is always delivered in order). "
        "Attempts share one event loop, not threads; with several targets one may use at most half.", 64, minimum=1,
        maximum=256
    )
    no_recovery_resolve_after: float = setting(
        DURATION,
        "Kapacitor never sends OK for `.noRecoveries()` alerts: the bridge resolves such an id itself "
        "when no new event arrives within this time (targets without `resolve_after`).",
        3600.0,
        positive=True,
    )
    coalesce: str = setting(
        COALESCE,
        "When several events of one id are queued behind a platform that cannot keep up (its oldest "
        "failed once, waited 10 s, or the rate limit holds it), deliver state, not history: "
        "`\"worst-then-latest\"` sends the worst skipped level if the platform was not told it, then the latest; "
        "`\"latest\"` only the latest; `\"off\"` every event in order. Skipped rows stay on file as `superseded`.",
        "worst-then-latest",
    )


@dataclass(frozen=True)
class TargetConfig:
    """One ``[[target]]``: the platform formatter plus what the bridge does around it.

    The fields declared with :func:`setting` are the keys every target type accepts.
    """

    name: str = setting(NAME, "Target name: `POST /alerts/<name>` delivers to it (letters, digits, `_ - .`).")
    type: str = setting(NONEMPTY, "Platform type; see the sections below.")
    target: Any = field(default=None, repr=False)
    rate_limit: Optional[RateLimit] = setting(
        RATE_LIMIT,
        "Requests per period to the platform (`\"120/1m\"`); over it, deliveries wait (never dropped). "
        "`\"off\"` disables.",
        None,
        default_text="the type's (below)",
    )
    resolve_after: Optional[float] = setting(
        DURATION, "Resolve an id on the platform when it has been quiet this long.", None, positive=True
    )
    ca_file: Optional[str] = setting(FILE, "Extra CA bundle for a self-hosted platform (verification stays on).", None)
    timeout: Optional[float] = setting(
        DURATION, "Total time one attempt may take for this target.", None, default_text="`[delivery]` `timeout`", positive=True
    )
    #: Keys given in the table (names only, for ``check-config``).
    keys: Tuple[str, ...] = ()

    def auto_resolve_after(self, event: AlertEvent, no_recovery_default: float) -> Optional[float]:
        """Seconds after which the bridge resolves this id itself if nothing new arrives.

        Kapacitor never sends OK for ``.noRecoveries()`` alerts, and a series that
        stops reporting never recovers either; without this the incident stays open.
        """
        if event.is_recovery:
            return None
        if self.resolve_after is not None:
            return self.resolve_after
        if not event.recoverable:
            return no_recovery_default
        return None


@dataclass(frozen=True)
class HeartbeatConfig:
    """``[[heartbeat]]``: prove to the platform that the alert path is alive.

    Called every interval only while the bridge is healthy (and Kapacitor answers,
    with ``kapacitor_url``); point it at e.g. a Grafana OnCall heartbeat URL.
    """

    name: str = setting(NAME, "Name in logs and metrics.", default_text='"heartbeat-<n>"')
    url: str = setting(URL, "URL called every interval (e.g. a Grafana OnCall heartbeat URL).", secret=True)
    interval: float = setting(DURATION, "Time between calls.", 60.0, positive=True)
    kapacitor_url: Optional[str] = setting(
        URL, "Only call while Kapacitor answers `GET <kapacitor_url>/kapacitor/v1/ping` with 204.", None, secret=True
    )
    method: str = setting(METHOD, "HTTP method.", "GET")
    timeout: float = setting(DURATION, "Total time one call may take.", 10.0, positive=True)
    ca_file: Optional[str] = setting(FILE, "Extra CA bundle for the heartbeat URL.", None)


@dataclass(frozen=True)
class KapacitorConfig:
    """``[kapacitor]``: reconcile the platforms with Kapacitor's alert state (off without ``url``).

    At start and every ``reconcile_interval`` the bridge reads every topic's events and
    queues a resolve for an open incident whose id is OK or gone in Kapacitor, and a
    trigger for a non-OK id the platform was never told about (``bridge.reconcile``).
    """

    url: Optional[str] = setting(
        URL,
        "Kapacitor's HTTP API, e.g. \"http://127.0.0.1:9092\" (basic-auth credentials may go in the URL). "
        "Unset: no reconcile.",
        None,
        secret=True,
    )
    token: Optional[str] = setting(NONEMPTY, "Bearer token for Kapacitor's API (when its auth is on).", None, secret=True)
    ca_file: Optional[str] = setting(FILE, "Extra CA bundle for an https Kapacitor.", None)
    reconcile_interval: float = setting(
        DURATION, "Time between reconcile rounds (one also runs at start).", 300.0, positive=True
    )
    routes: Optional[Mapping[str, str]] = setting(
        STRING_MAP,
        "Topic name (as `GET /kapacitor/v1/alerts/topics` lists it: a `.topic('cpu')` name or "
        "`main:<task>:alert<N>`) or glob (`\"main:cpu_*\"`) → target for ids non-OK in Kapacitor. "
        "Only targets named here or in `default_target` are reconciled.",
        None,
        default_text="`{}`",
    )
    default_target: Optional[str] = setting(
        NONEMPTY, "Target for non-OK ids whose topics match no route and that no target has an incident for.", None
    )
    timeout: float = setting(DURATION, "Total time one request to Kapacitor may take.", 10.0, positive=True)


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``secrets`` feeds the log redactor and never prints."""

    server: ServerConfig = section(ServerConfig)
    store: StoreConfig = section(StoreConfig)
    delivery: DeliveryConfig = section(DeliveryConfig)
    kapacitor: KapacitorConfig = section(KapacitorConfig)
    targets: Mapping[str, TargetConfig] = field(default_factory=dict)
    heartbeats: Tuple[HeartbeatConfig, ...] = ()
    #: ``POST /alerts/<name>`` enqueues for each of these targets (Alertmanager HA ``urls``).
    fanout: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    secrets: FrozenSet[str] = field(default_factory=frozenset, repr=False)
    source: Optional[str] = None


#: Arrays of tables, each table read with the class's declarations.
ARRAYS: Mapping[str, Type[Any]] = {"target": TargetConfig, "heartbeat": HeartbeatConfig}


def sections() -> Dict[str, Type[Any]]:
    """``[name]`` tables of :class:`Config`, in file order: a new section is one ``section()`` field."""
    return {f.name: f.metadata["section"] for f in dataclasses.fields(Config) if "section" in f.metadata}


def default_config() -> Config:
    """The embedded defaults used by ``serve`` without ``--config``: no targets."""
    return Config()
