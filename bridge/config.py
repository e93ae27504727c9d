"""The bridge's configuration: one frozen tree, read once from TOML at startup.

Everything an operator can get wrong is checked here, at load time, and every
error names the full dotted key (``target.pd.routing_key``) so ``check-config``
points at the line to fix. Secret values (``env:NAME`` / ``file:PATH``, tokens,
keys, passwords, target URLs) are collected in :attr:`Config.secrets` so the log
redactor can scrub them; no error message here ever quotes a value.

Relative paths (``file:``, ``store.path``, ``ca_file``) are relative to the
working directory of the process, like Kapacitor's own configuration.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigError
from .event import AlertEvent
from .targets.base import Options, RateLimit, get_type, registered_types

if TYPE_CHECKING:
    from .reconcile import KapacitorConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

__all__ = [
    "Config",
    "DEFAULT_LISTEN",
    "DeliveryConfig",
    "HeartbeatConfig",
    "ServerConfig",
    "StoreConfig",
    "TargetConfig",
    "default_config",
    "from_mapping",
    "load",
    "parse_duration",
    "parse_listen",
]

DEFAULT_LISTEN = "127.0.0.1:9095"

#: Target names are URL path segments (``/alerts/<name>``) and metric labels.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Keys whose values are credentials (or carry them, like URLs with a token path).
_SECRET_KEY = re.compile(r"(token|passw|secret|key$|_key|apikey|url$|username|auth|credential)", re.I)
_SECRET_HEADER = re.compile(r"(auth|token|key|secret|cookie|signature|session)", re.I)
#: Values shorter than this are not redacted: scrubbing "on" from every log line helps nobody.
MIN_SECRET_CHARS = 4
_COMMON_KEYS = ("name", "type", "rate_limit", "resolve_after", "ca_file", "timeout")


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where Kapacitor posts, and who may post."""

    host: str = "127.0.0.1"
    port: int = 9095
    token: Optional[str] = field(default=None, repr=False)
    max_body_bytes: int = 1048576

    @property
    def listen(self) -> str:
        """``host:port`` as written in the config (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

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
    """``[store]``: the SQLite outbox."""

    path: str = "kapacitor-oncall.db"
    #: Delivered and suppressed rows kept for ``queue`` statistics; dead letters are always kept.
    keep_delivered: int = 10000


@dataclass(frozen=True)
class DeliveryConfig:
    """``[delivery]``: retry policy and worker pool (all durations in seconds)."""

    timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    max_age: float = 86400.0
    repeat_interval: float = 3600.0
    workers: int = 8
    #: Auto-resolve delay for ``recoverable: false`` events on targets without ``resolve_after``.
    no_recovery_resolve_after: float = 3600.0


@dataclass(frozen=True)
class TargetConfig:
    """One ``[[target]]``: the platform formatter plus what the bridge does around it."""

    name: str
    type: str
    target: Any = field(repr=False)
    rate_limit: Optional[RateLimit] = None
    resolve_after: Optional[float] = None
    ca_file: Optional[str] = None
    timeout: Optional[float] = None
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
    """One ``[[heartbeat]]``: prove to the platform that the alert path is alive."""

    name: str
    url: str = field(repr=False)
    interval: float = 60.0
    kapacitor_url: Optional[str] = field(default=None, repr=False)
    method: str = "GET"
    timeout: float = 10.0
    ca_file: Optional[str] = None


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``secrets`` feeds the log redactor and never prints."""

    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    targets: Mapping[str, TargetConfig] = field(default_factory=dict)
    heartbeats: Tuple[HeartbeatConfig, ...] = ()
    #: ``[kapacitor]``: reconcile with Kapacitor's alert state (None: off).
    kapacitor: Optional["KapacitorConfig"] = None
    #: ``POST /alerts/<name>`` enqueues for each of these targets (Alertmanager HA ``urls``).
    fanout: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    secrets: FrozenSet[str] = field(default_factory=frozenset, repr=False)
    source: Optional[str] = None


def default_config() -> Config:
    """The embedded defaults used by ``serve`` without ``--config``: no targets."""
    return Config()


def load(path: str) -> Config:
    """Read, resolve and validate a TOML file."""
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
    return from_mapping(data, source=path)


def from_mapping(data: Mapping[str, Any], source: Optional[str] = None) -> Config:
    """Build the config tree from decoded TOML (tests call this directly)."""
    secrets: Set[str] = set()
    resolved = _resolve_secrets(data, "", secrets)
    try:
        return _build(resolved, secrets, source)
    except ConfigError as exc:
        # A target class may quote a value in its message; make sure no secret escapes.
        message = _scrub(exc.message, secrets)
        if message != exc.message:
            raise ConfigError(exc.key, message) from None
        raise


def _build(data: Mapping[str, Any], secrets: Set[str], source: Optional[str]) -> Config:
    _only(data, "", ("server", "store", "delivery", "target", "heartbeat", "kapacitor"))
    server = _server(_table(data, "server"))
    if server.token:
        secrets.add(server.token)
    store = _store(_table(data, "store"))
    delivery = _delivery(_table(data, "delivery"))
    targets: Dict[str, TargetConfig] = {}
    for index, table in enumerate(_array(data, "target")):
        target = _target(table, index, secrets)
        if target.name in targets:
            raise ConfigError(f"target.{target.name}.name", "duplicate target name")
        targets[target.name] = target
    heartbeats = tuple(_heartbeat(t, i, secrets) for i, t in enumerate(_array(data, "heartbeat")))
    names = [h.name for h in heartbeats]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"heartbeat.{name}.name", "duplicate heartbeat name")
    fanout: Dict[str, Tuple[str, ...]] = {}
    for name, target in list(targets.items()):
        split = getattr(target.target, "fan_out", None)
        members = split() if split is not None else []
        if len(members) > 1:
            # An HA cluster shares no alerts: one queue per member, so a failing member is
            # retried on its own and never holds back the others. Member 1 keeps the name.
            split_names = (name,) + tuple(f"{name}@{i}" for i in range(2, len(members) + 1))
            for member_name, member in zip(split_names, members):
                targets[member_name] = replace(target, name=member_name, target=replace(member, name=member_name))
            fanout[name] = split_names
    for name, target in list(targets.items()):
        bind = getattr(target.target, "with_bridge_url", None)
        if bind is not None:  # e.g. the webhook body's externalURL: where the bridge listens
            targets[name] = replace(target, target=bind(f"http://{server.listen}"))
    kapacitor = None
    if "kapacitor" in data:
        from .reconcile import parse_kapacitor

        kapacitor = parse_kapacitor(_table(data, "kapacitor"), targets, fanout)
        if kapacitor.token:
            secrets.add(kapacitor.token)
        secrets.update(_url_secrets(kapacitor.url))
    return Config(
        server=server,
        store=store,
        delivery=delivery,
        targets=targets,
        heartbeats=heartbeats,
        kapacitor=kapacitor,
        fanout=fanout,
        secrets=frozenset(s for s in secrets if len(s) >= MIN_SECRET_CHARS),
        source=source,
    )


# -- sections -------------------------------------------------------------------


def _server(t: Mapping[str, Any]) -> ServerConfig:
    _only(t, "server", ("listen", "token", "max_body_bytes"))
    listen = _str(t, "server", "listen", DEFAULT_LISTEN)
    host, port = parse_listen(listen, "server.listen")
    token = _str(t, "server", "token", None)
    if token is not None and not token:
        raise ConfigError("server.token", "must not be empty (remove the key to disable auth)")
    max_body = _int(t, "server", "max_body_bytes", 1048576, minimum=1024)
    return ServerConfig(host=host, port=port, token=token, max_body_bytes=max_body)


def _store(t: Mapping[str, Any]) -> StoreConfig:
    _only(t, "store", ("path", "keep_delivered"))
    path = _str(t, "store", "path", "kapacitor-oncall.db")
    if not path:
        raise ConfigError("store.path", "must not be empty")
    keep = _int(t, "store", "keep_delivered", 10000, minimum=0)
    return StoreConfig(path=path, keep_delivered=keep)


def _delivery(t: Mapping[str, Any]) -> DeliveryConfig:
    keys = (
        "timeout",
        "backoff_initial",
        "backoff_max",
        "max_age",
        "repeat_interval",
        "workers",
        "no_recovery_resolve_after",
    )
    _only(t, "delivery", keys)
    d = DeliveryConfig()
    cfg = DeliveryConfig(
        timeout=_duration(t, "delivery", "timeout", d.timeout, positive=True),
        backoff_initial=_duration(t, "delivery", "backoff_initial", d.backoff_initial, positive=True),
        backoff_max=_duration(t, "delivery", "backoff_max", d.backoff_max, positive=True),
        max_age=_duration(t, "delivery", "max_age", d.max_age, positive=True),
        repeat_interval=_duration(t, "delivery", "repeat_interval", d.repeat_interval),
        workers=_int(t, "delivery", "workers", d.workers, minimum=1, maximum=256),
        no_recovery_resolve_after=_duration(
            t, "delivery", "no_recovery_resolve_after", d.no_recovery_resolve_after, positive=True
        ),
    )
    if cfg.backoff_max < cfg.backoff_initial:
        raise ConfigError("delivery.backoff_max", "must not be smaller than delivery.backoff_initial")
    return cfg


def _target(table: Any, index: int, secrets: Set[str]) -> TargetConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"target[{index}]", "must be a table")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"target[{index}].name", "is required")
    if not _NAME.match(name):
        raise ConfigError(
            f"target[{index}].name", "use letters, digits, '_', '-', '.' (it is a URL path segment)"
        )
    prefix = f"target.{name}"
    type_name = table.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError(f"{prefix}.type", "is required")
    try:
        cls = get_type(type_name)
    except KeyError:
        known = ", ".join(registered_types())
        raise ConfigError(f"{prefix}.type", f"unknown type {type_name!r} (known: {known})") from None
    _collect_secrets(table, secrets)
    rate_limit = cls.default_rate_limit
    if "rate_limit" in table:
        spec = table["rate_limit"]
        if spec == "off":
            rate_limit = None
        else:
            try:
                rate_limit = RateLimit.parse(spec)
            except ValueError:
                raise ConfigError(
                    f"{prefix}.rate_limit", "must look like \"120/1m\" (count/period) or \"off\""
                ) from None
    resolve_after = None
    if "resolve_after" in table:
        resolve_after = _duration(table, prefix, "resolve_after", 0.0, positive=True)
    timeout = None
    if "timeout" in table:
        timeout = _duration(table, prefix, "timeout", 0.0, positive=True)
    ca_file = _ca_file(table, prefix)
    for key in ("url",):
        if key in table:
            _check_url(table[key], f"{prefix}.{key}")
    rest = {k: v for k, v in table.items() if k not in _COMMON_KEYS}
    target = cls.from_options(name, Options(prefix, rest))
    return TargetConfig(
        name=name,
        type=type_name,
        target=target,
        rate_limit=rate_limit,
        resolve_after=resolve_after,
        ca_file=ca_file,
        timeout=timeout,
        keys=tuple(sorted(table)),
    )


def _heartbeat(table: Any, index: int, secrets: Set[str]) -> HeartbeatConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"heartbeat[{index}]", "must be a table")
    name = table.get("name", f"heartbeat-{index + 1}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"heartbeat[{index}].name", "use letters, digits, '_', '-', '.'")
    prefix = f"heartbeat.{name}"
    _only(table, prefix, ("name", "url", "interval", "kapacitor_url", "method", "timeout", "ca_file"))
    _collect_secrets(table, secrets)
    url = _str(table, prefix, "url", None)
    if not url:
        raise ConfigError(f"{prefix}.url", "is required")
    _check_url(url, f"{prefix}.url")
    kapacitor_url = _str(table, prefix, "kapacitor_url", None)
    if kapacitor_url is not None:
        _check_url(kapacitor_url, f"{prefix}.kapacitor_url")
    method = _str(table, prefix, "method", "GET").upper()
    if method not in ("GET", "POST"):
        raise ConfigError(f"{prefix}.method", "must be GET or POST")
    return HeartbeatConfig(
        name=name,
        url=url,
        interval=_duration(table, prefix, "interval", 60.0, positive=True),
        kapacitor_url=kapacitor_url.rstrip("/") if kapacitor_url else None,
        method=method,
        timeout=_duration(table, prefix, "timeout", 10.0, positive=True),
        ca_file=_ca_file(table, prefix),
    )


# -- values ---------------------------------------------------------------------


def parse_duration(value: Any, key: str = "duration") -> float:
    """``"500ms"``, ``"10s"``, ``"5m"``, ``"24h"``, ``"1h30m"`` (or a number of seconds)."""
    if isinstance(value, bool):
        raise ConfigError(key, "must be a duration like \"10s\"")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(key, "must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(key, "must be a duration like \"10s\"")
    text = value.strip()
    if text in ("0", "off"):
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNIT[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        # The value is not quoted: a secret pasted on the wrong line must not end up in a log.
        raise ConfigError(key, "must be a duration like \"500ms\", \"10s\", \"5m\", \"24h\"")
    return total


def parse_listen(value: str, key: str = "server.listen") -> Tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces) into (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(key, "must be host:port, e.g. \"127.0.0.1:9095\"")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(key, "port must be 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = "0.0.0.0"
    return host, port


def _duration(t: Mapping[str, Any], prefix: str, key: str, default: float, positive: bool = False) -> float:
    if key not in t:
        return default
    value = parse_duration(t[key], f"{prefix}.{key}")
    if positive and value <= 0:
        raise ConfigError(f"{prefix}.{key}", "must be greater than zero")
    return value


def _str(t: Mapping[str, Any], prefix: str, key: str, default: Optional[str]) -> Any:
    if key not in t:
        return default
    value = t[key]
    if not isinstance(value, str):
        raise ConfigError(f"{prefix}.{key}", "must be a string")
    return value


def _int(
    t: Mapping[str, Any], prefix: str, key: str, default: int, minimum: int = 0, maximum: Optional[int] = None
) -> int:
    if key not in t:
        return default
    value = t[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{prefix}.{key}", "must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{prefix}.{key}", f"must be {bound}")
    return value


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table ([" + key + "])")
    return value


def _array(data: Mapping[str, Any], key: str) -> List[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(key, f"must be an array of tables ([[{key}]])")
    return value


def _only(t: Mapping[str, Any], prefix: str, allowed: Tuple[str, ...]) -> None:
    """Reject unknown keys: a typo must fail loudly, not silently use a default."""
    for key in sorted(t):
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(where, f"unknown key (known: {', '.join(allowed)})")


def _ca_file(t: Mapping[str, Any], prefix: str) -> Optional[str]:
    path = _str(t, prefix, "ca_file", None)
    if path is None:
        return None
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(f"{prefix}.ca_file", f"cannot read {path}")
    return str(path)


def _check_url(value: Any, key: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(key, "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, "must be an http:// or https:// URL with a host")


# -- secrets --------------------------------------------------------------------


def _resolve_secrets(value: Any, key: str, secrets: Set[str]) -> Any:
    """Replace ``env:NAME`` / ``file:PATH`` strings by their value, recording it as secret."""
    if isinstance(value, dict):
        return {k: _resolve_secrets(v, f"{key}.{k}" if key else k, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_secrets(v, _item_key(key, i, v), secrets) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value[4:]
        if not name:
            raise ConfigError(key, "env: needs a variable name")
        if name not in os.environ:
            raise ConfigError(key, f"environment variable {name} is not set")
        resolved = os.environ[name]
    elif value.startswith("file:"):
        path = value[5:]
        try:
            resolved = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(key, f"cannot read secret file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(key, f"secret file {path} is not UTF-8") from None
    else:
        return value
    if not resolved:
        raise ConfigError(key, "secret resolves to an empty value")
    secrets.add(resolved)
    secrets.update(_url_secrets(resolved))
    return resolved


def _item_key(key: str, index: int, item: Any) -> str:
    """``target.pd`` rather than ``target[2]`` for named tables, so errors read naturally."""
    if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
        return f"{key}.{item['name']}"
    return f"{key}[{index}]"


def _collect_secrets(table: Mapping[str, Any], secrets: Set[str]) -> None:
    """Record values of credential-looking keys (and header values) as secrets."""
    for key, value in table.items():
        if key in ("name", "type"):
            continue
        if isinstance(value, dict):
            for sub, inner in value.items():
                if isinstance(inner, str) and (key == "headers" and _SECRET_HEADER.search(sub) or _SECRET_KEY.search(sub)):
                    secrets.add(inner)
            continue
        if isinstance(value, str) and _SECRET_KEY.search(key):
            secrets.add(value)
            secrets.update(_url_secrets(value))


def _url_secrets(value: str) -> Set[str]:
    """Parts of a URL that can carry a credential on their own.

    HTTP libraries quote the path without the host in their errors, so the token
    path segment must be scrubbed even where the full URL does not appear.
    """
    out: Set[str] = set()
    if "://" not in value:
        return out
    try:
        parts = urlsplit(value)
    except ValueError:
        return out
    if parts.password:
        out.add(parts.password)
    out.add(value.split("://", 1)[1])
    segments = [s for s in parts.path.split("/") if s]
    risky = [s for s in segments if _token_like(s)]
    out.update(risky)
    if risky:
        out.add(parts.path)
        if parts.query:
            out.add(f"{parts.path}?{parts.query}")
    for _, v in parse_qsl(parts.query):
        if len(v) >= 8:
            out.add(v)
    return out


def _token_like(segment: str) -> bool:
    """Long, or mixing letters and digits: what generated tokens and keys look like."""
    if len(segment) >= 20:
        return True
    has_digit = any(c.isdigit() for c in segment)
    has_alpha = any(c.isalpha() for c in segment)
    return len(segment) >= 10 and has_digit and has_alpha


def _scrub(text: str, secrets: Set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, "***")
    return text
