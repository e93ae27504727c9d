"""The bridge's configuration: one frozen tree, read once from TOML at startup.

Each section is a dataclass in :mod:`bridge.settings` whose fields are the
declarations of its keys (:func:`bridge.schema.setting`: type, default,
meaning); ``[[target]]`` keys
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
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple
from urllib.parse import urlsplit

from .errors import ConfigError
from .schema import Errors, Key, format_duration, keys_of, parse_duration, parse_listen, read_table, unknown_key
from .settings import (
    ARRAYS,
    DEFAULT_LISTEN,
    Config,
    DeliveryConfig,
    HeartbeatConfig,
    KapacitorConfig,
    ServerConfig,
    StoreConfig,
    TargetConfig,
    default_config,
    section,
    sections,
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
