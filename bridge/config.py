"""The bridge's configuration: one frozen tree, read once from TOML at startup.

Each section is a dataclass whose fields are the declarations of its keys
(:func:`bridge.schema.setting`: type, default, meaning); ``[[target]]`` keys
of the platform formatters are declared in :mod:`bridge.targets.keys`. Loading
checks every key against those declarations and reports all problems of a file
at once (:class:`bridge.schema.ConfigErrors`), each naming the full dotted key
(``target.pd.routing_key``). No error message quotes a value; secrets
(``env:NAME`` / ``file:PATH``, tokens, keys, passwords, target URLs) are
collected in :attr:`Config.secrets` for the log redactor.

Relative paths (``file:``, ``store.path``, ``ca_file``) are relative to the
working directory of the process, like Kapacitor's own configuration.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple, Type
from urllib.parse import urlsplit

from .errors import ConfigError
from .event import AlertEvent
from .schema import (
    DURATION,
    FILE,
    INTEGER,
    LISTEN,
    NONEMPTY,
    RATE_LIMIT,
    STRING_MAP,
    URL,
    Errors,
    Key,
    Kind,
    format_duration,
    keys_of,
    parse_duration,
    parse_listen,
    read_table,
    setting,
    unknown_key,
)
from .secret_values import MIN_SECRET_CHARS, collect_secrets, resolve_secrets, scrub
from .targets.base import Options, RateLimit, get_type, registered_types
from .targets.keys import keys_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

__all__ = [
    "Config",
    "DEFAULT_LISTEN",
    "DeliveryConfig",
    "HeartbeatConfig",
    "KapacitorConfig",
    "MIN_SECRET_CHARS",
    "ServerConfig",
    "StoreConfig",
    "TargetConfig",
    "bind_bridge_url",
    "default_config",
    "format_duration",
    "from_mapping",
    "listen_error",
    "load",
    "parse_duration",
    "parse_listen",
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
        INTEGER, "Parallel deliveries (different ids; one id is always delivered in order).", 8, minimum=1, maximum=256
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


def listen_error(server: ServerConfig) -> Optional[ConfigError]:
    """The refusal of an open listener without a token (``serve`` and ``check-config`` share it)."""
    if server.is_loopback or server.token:
        return None
    return ConfigError(
        "server.listen",
        f"{server.listen} is not a loopback address and server.token is not set; set a token or pass --insecure",
    )


def load(path: str, *, insecure: bool = True) -> Config:
    """Read, resolve and validate a TOML file.

    ``insecure=False`` adds the rule ``serve`` enforces: a non-loopback listen
    address needs a token.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config", f"{path} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return from_mapping(data, source=path, insecure=insecure)


def from_mapping(data: Mapping[str, Any], source: Optional[str] = None, *, insecure: bool = True) -> Config:
    """Build the config tree from decoded TOML (tests call this directly).

    Raises one :class:`ConfigError`, or :class:`bridge.schema.ConfigErrors` listing all.
    """
    secrets: Set[str] = set()
    errors = Errors()
    resolved = resolve_secrets(data, "", secrets, errors)
    config = _build(resolved, secrets, source, errors)
    if config is not None and not insecure:
        problem = listen_error(config.server)
        if problem is not None:
            errors.items.append(problem)
    for item in errors.items:
        # A target class may quote a value in its message; make sure no secret escapes.
        item.message = scrub(item.message, secrets)
        item.args = (f"{item.key}: {item.message}",)
    errors.raise_if_any()
    assert config is not None
    return config


def _build(data: Mapping[str, Any], secrets: Set[str], source: Optional[str], errors: Errors) -> Optional[Config]:
    tables = sections()
    for key in data:
        if key not in tables and key not in ARRAYS:
            errors.add(key, unknown_key(key, [*tables, *ARRAYS], "the top level"))
    parts: Dict[str, Any] = {}
    for name, cls in tables.items():
        table = _table(data, name, errors)
        keys = keys_of(cls)
        values = read_table(table, name, keys, errors, f"[{name}]")
        collect_secrets(table, secrets, [k.name for k in keys if k.secret])
        parts[name] = cls(**values)
    delivery: DeliveryConfig = parts["delivery"]
    store: StoreConfig = parts["store"]
    if store.backend == "postgres" and not store.dsn:
        errors.add("store.dsn", "required when store.backend is \"postgres\" (e.g. \"env:BRIDGE_PG_DSN\")")
    if delivery.backoff_max < delivery.backoff_initial:
        errors.add("delivery.backoff_max", "must not be smaller than delivery.backoff_initial")
    targets: Dict[str, TargetConfig] = {}
    for index, table in enumerate(_array(data, "target", errors)):
        target = _target(table, index, secrets, errors)
        if target is None:
            continue
        if target.name in targets:
            errors.add(f"target.{target.name}.name", "duplicate target name")
        targets[target.name] = target
    heartbeats: List[HeartbeatConfig] = []
    for index, table in enumerate(_array(data, "heartbeat", errors)):
        beat = _heartbeat(table, index, secrets, errors)
        if beat is None:
            continue
        if any(h.name == beat.name for h in heartbeats):
            errors.add(f"heartbeat.{beat.name}.name", "duplicate heartbeat name")
        heartbeats.append(beat)
    fanout = _fan_out(targets, secrets)
    _check_routes(parts["kapacitor"], targets, errors)
    if errors:
        return Config(server=parts["server"]) if "server" in parts else None
    return Config(
        **parts,
        targets=targets,
        heartbeats=tuple(heartbeats),
        fanout=fanout,
        secrets=frozenset(s for s in secrets if len(s) >= MIN_SECRET_CHARS),
        source=source,
    )


# -- arrays of tables ---------------------------------------------------------------


def _fan_out(targets: Dict[str, TargetConfig], secrets: Set[str]) -> Dict[str, Tuple[str, ...]]:
    """Split a target with several members (Alertmanager HA ``urls``) into one target each.

    An HA cluster shares no alerts: each member gets its own queue, so a failing member is
    retried on its own and never holds back the others. Member 1 keeps the name, the
    others are ``<name>@2``… (``@`` cannot appear in a configured name).
    """
    fanout: Dict[str, Tuple[str, ...]] = {}
    for name, target in list(targets.items()):
        split = getattr(target.target, "fan_out", None)
        members = split() if split is not None else []
        for member in members:
            password = urlsplit(member.url).password
            if password:
                secrets.add(password)
        if len(members) > 1:
            names = (name,) + tuple(f"{name}@{i}" for i in range(2, len(members) + 1))
            for member_name, member in zip(names, members):
                targets[member_name] = dataclasses.replace(
                    target, name=member_name, target=dataclasses.replace(member, name=member_name)
                )
            fanout[name] = names
    return fanout


def bind_bridge_url(config: Config) -> Config:
    """Targets that name the bridge in their payload (``externalURL``) learn where it listens.

    Done by ``serve`` and ``send-test``, not by the loader: the loaded targets stay equal to
    what their type builds from the same keys.
    """
    targets = dict(config.targets)
    for name, target in config.targets.items():
        bind = getattr(target.target, "with_bridge_url", None)
        if bind is not None:
            targets[name] = dataclasses.replace(target, target=bind(f"http://{config.server.listen}"))
    return dataclasses.replace(config, targets=targets)


def _check_routes(kapacitor: KapacitorConfig, targets: Mapping[str, TargetConfig], errors: Errors) -> None:
    """``[kapacitor]`` routes and default_target must name configured targets."""
    known = ", ".join(sorted(t for t in targets if "@" not in t)) or "none"
    for topic, name in (kapacitor.routes or {}).items():
        if name not in targets:
            errors.add(f"kapacitor.routes.{topic}", f"names no configured target (known: {known})")
    if kapacitor.default_target is not None and kapacitor.default_target not in targets:
        errors.add("kapacitor.default_target", f"names no configured target (known: {known})")
    if (kapacitor.routes or kapacitor.default_target) and kapacitor.url is None:
        errors.add("kapacitor.url", "is required when routes or default_target are set")


def _target(table: Any, index: int, secrets: Set[str], errors: Errors) -> Optional[TargetConfig]:
    if not isinstance(table, dict):
        errors.add(f"target[{index}]", "must be a table")
        return None
    before = len(errors)
    common = keys_of(TargetConfig)
    name_key, type_key = common[0], common[1]
    name, type_name = table.get("name"), table.get("type")
    with errors.catch():
        name = name_key.read(name, f"target[{index}].name") if "name" in table else _missing(f"target[{index}].name")
    prefix = f"target.{name}" if len(errors) == before else f"target[{index}]"
    try:
        type_name = type_key.read(type_name, f"{prefix}.type") if "type" in table else _missing(f"{prefix}.type")
        cls = get_type(type_name)
    except ConfigError as exc:
        errors.items.append(exc)
        return None
    except KeyError:
        known = registered_types()
        errors.add(f"{prefix}.type", unknown_key(str(type_name), known, noun="type"))
        return None
    specific = keys_for(type_name)
    values = read_table(table, prefix, common + specific, errors, f"type {type_name}")
    collect_secrets(table, secrets, [k.name for k in common + specific if k.secret])
    if len(errors) > before:
        return None
    options = {k: v for k, v in table.items() if k not in {c.name for c in common}}
    for key in specific:
        if key.name not in options and key.default is not None:
            options[key.name] = key.default
    with errors.catch():
        target = cls.from_options(name, Options(prefix, options))
        spec = values.get("rate_limit")
        return TargetConfig(
            name=str(name),
            type=type_name,
            target=target,
            rate_limit=cls.default_rate_limit if spec is None else None if spec == "off" else RateLimit.parse(spec),
            resolve_after=values.get("resolve_after"),
            ca_file=values.get("ca_file"),
            timeout=values.get("timeout"),
            keys=tuple(sorted(table)),
        )
    return None


def _heartbeat(table: Any, index: int, secrets: Set[str], errors: Errors) -> Optional[HeartbeatConfig]:
    if not isinstance(table, dict):
        errors.add(f"heartbeat[{index}]", "must be a table")
        return None
    before = len(errors)
    keys = keys_of(HeartbeatConfig)
    name = table.get("name", f"heartbeat-{index + 1}")
    with errors.catch():
        keys[0].read(name, f"heartbeat[{index}].name")
    prefix = f"heartbeat.{name}" if len(errors) == before else f"heartbeat[{index}]"
    values = read_table({**table, "name": name}, prefix, keys, errors, "[[heartbeat]]")
    collect_secrets(table, secrets, [k.name for k in keys if k.secret])
    if len(errors) > before:
        return None
    if values.get("kapacitor_url"):
        values["kapacitor_url"] = values["kapacitor_url"].rstrip("/")
    return HeartbeatConfig(**values)


def _missing(where: str) -> Any:
    raise ConfigError(where, "is required")


def _table(data: Mapping[str, Any], key: str, errors: Errors) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        errors.add(key, f"must be a table ([{key}])")
        return {}
    return value


def _array(data: Mapping[str, Any], key: str, errors: Errors) -> List[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        errors.add(key, f"must be an array of tables ([[{key}]])")
        return []
    return value


def all_keys() -> Dict[str, Tuple[Key, ...]]:
    """Every declared key by table, for the reference (targets: the common keys)."""
    out = {name: keys_of(cls) for name, cls in sections().items()}
    out.update({name: keys_of(cls) for name, cls in ARRAYS.items()})
    return out
