"""The configuration schema: one :class:`Key` per setting, and the readers it drives.

A key is declared once, with its type (:class:`Kind`), default, meaning and,
for ``[[target]]`` keys, the target types it applies to. The same declaration
validates a table (:func:`read_table`), names the valid keys when one is
unknown, and writes the reference (``config-reference``, ``docs/configuration.md``).

Section keys are declared as dataclass fields (:func:`setting`), so adding
``[delivery] coalesce`` is one line in ``DeliveryConfig``; target keys live in
:mod:`bridge.targets.keys`, one :class:`Key` each.

Every reader appends to an :class:`Errors` collector instead of raising, so
``check-config`` reports every problem of a file in one run. No message quotes
a value: a secret pasted on the wrong line must not reach a log.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = [
    "BOOL",
    "DURATION",
    "FILE",
    "INTEGER",
    "LEVELS",
    "LISTEN",
    "NONEMPTY",
    "RATE_LIMIT",
    "STRING",
    "STRING_LIST",
    "STRING_MAP",
    "STRING_OR_LIST",
    "URL",
    "URL_LIST",
    "ConfigErrors",
    "Errors",
    "Key",
    "Kind",
    "keys_of",
    "parse_duration",
    "parse_listen",
    "read_table",
    "setting",
    "unknown_key",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(ms|s|m|h)\s*$")
#: Alert levels a ``levels`` table may map (Kapacitor's, minus OK which resolves).
LEVEL_NAMES = ("INFO", "WARNING", "CRITICAL")


class ConfigErrors(ConfigError):
    """Several configuration errors at once; ``errors`` holds each, in file order."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first.key, first.message + more)
        self.errors: Tuple[ConfigError, ...] = tuple(errors)


class Errors:
    """Collects :class:`ConfigError` s so one run reports them all."""

    def __init__(self) -> None:
        self.items: List[ConfigError] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(ConfigError(key, message))

    def catch(self) -> "_Catch":
        """``with errors.catch(): ...`` records a raised ConfigError and carries on."""
        return _Catch(self)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        """Raise the one error, or all of them; only the first error of each key counts
        (an unresolved ``env:`` value need not also be reported as a bad URL)."""
        seen: Dict[str, ConfigError] = {}
        for item in self.items:
            seen.setdefault(item.key, item)
        unique = list(seen.values())
        if len(unique) == 1:
            raise unique[0]
        if unique:
            raise ConfigErrors(unique)


class _Catch:
    def __init__(self, errors: Errors) -> None:
        self._errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Any) -> bool:
        if isinstance(exc, ConfigErrors):
            self._errors.items.extend(exc.errors)
            return True
        if isinstance(exc, ConfigError):
            self._errors.items.append(exc)
            return True
        return False


@dataclass(frozen=True)
class Kind:
    """A value type: its name in the reference, and the parser (value, key) -> value."""

    name: str
    parse: Callable[[Any, str], Any]
    #: How a value looks, for the reference (``"10s"``).
    example: str = ""


@dataclass(frozen=True)
class Key:
    """One setting: everything validation and the reference need to know about it."""

    name: str
    kind: Kind
    doc: str
    default: Any = None
    #: The default as the reference shows it, when ``default`` alone would mislead.
    default_text: Optional[str] = None
    required: bool = False
    #: ``[[target]]`` keys: the types that accept this key (empty: every type).
    types: Tuple[str, ...] = ()
    #: The value is a credential (also scrubbed from logs).
    secret: bool = False
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Tuple[str, ...] = ()
    #: Durations: zero is not allowed.
    positive: bool = False

    def read(self, value: Any, where: str) -> Any:
        """Parse and range-check one value; ConfigError names ``where``."""
        parsed = self.kind.parse(value, where)
        if self.choices and parsed not in self.choices:
            raise ConfigError(where, f"must be one of {', '.join(self.choices)}")
        if self.positive and isinstance(parsed, float) and parsed <= 0:
            raise ConfigError(where, "must be greater than zero")
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            low, high = self.minimum, self.maximum
            if (low is not None and parsed < low) or (high is not None and parsed > high):
                bound = f"between {_num(low)} and {_num(high)}" if low is not None and high is not None else (
                    f"at least {_num(low)}" if low is not None else f"at most {_num(high)}"
                )
                raise ConfigError(where, f"must be {bound}")
        return parsed

    def applies_to(self, type_name: str) -> bool:
        return not self.types or type_name in self.types

    @property
    def shown_default(self) -> str:
        """The default for the reference (Markdown): TOML in backticks, or words."""
        if self.default_text is not None:
            return self.default_text
        if self.required:
            return "required"
        if self.default is None:
            return "—"
        return f"`{_toml(self.default, self.kind)}`"


def setting(kind: Kind, doc: str, default: Any = dataclasses.MISSING, **options: Any) -> Any:
    """A dataclass field that is also the declaration of its config key.

    Without ``default`` the key is required, unless ``default_text`` says what the
    loader fills in (a field without a dataclass default, like a heartbeat's name).
    """
    required = default is dataclasses.MISSING and options.get("default_text") is None
    key_default = None if default is dataclasses.MISSING else default
    return dataclasses.field(
        default=default,
        repr=not options.get("secret", False),
        metadata={"key": lambda name: Key(name, kind, doc, key_default, required=required, **options)},
    )


def keys_of(section: Any) -> Tuple[Key, ...]:
    """The keys a section dataclass declares with :func:`setting`, in field order."""
    out = []
    for f in dataclasses.fields(section):
        make = f.metadata.get("key")
        if make is not None:
            out.append(make(f.name))
    return tuple(out)


def read_table(
    table: Mapping[str, Any], prefix: str, keys: Sequence[Key], errors: Errors, what: str = ""
) -> Dict[str, Any]:
    """The parsed values of the keys present in ``table``; every problem goes to ``errors``.

    Absent keys are left out (their declared default applies); an unknown key is
    an error that lists the valid ones and suggests the closest.
    """
    known = {k.name: k for k in keys}
    for name in table:
        if name not in known:
            errors.add(f"{prefix}.{name}", unknown_key(name, sorted(known), what))
    out: Dict[str, Any] = {}
    for key in keys:
        where = f"{prefix}.{key.name}"
        if key.name not in table:
            if key.required:
                errors.add(where, "is required")
            continue
        with errors.catch():
            out[key.name] = key.read(table[key.name], where)
    return out


def unknown_key(name: str, known: Sequence[str], what: str = "", noun: str = "key") -> str:
    """``unknown key `urll` (did you mean `url`?); valid keys for …: …``."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    scope = f" for {what}" if what else ""
    return f"unknown {noun} `{name}`{hint}; valid {noun}s{scope}: {', '.join(known)}"


# -- kinds ------------------------------------------------------------------------


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, "must be a string")
    return value


def _nonempty(value: Any, where: str) -> str:
    text = _string(value, where)
    if not text:
        raise ConfigError(where, "must not be empty (remove the key to use the default)")
    return text


def _integer(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(where, "must be an integer")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, "must be true or false")
    return value


def _duration(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A bare number has no unit: is `timeout = 10` seconds or milliseconds? Say which.
        raise ConfigError(where, f"must be a duration string with a unit, e.g. \"{_num(value)}s\" (a bare number has no unit)")
    return parse_duration(value, where)


def _url(value: Any, where: str) -> str:
    text = _string(value, where)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(where, "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(where, "must be an http:// or https:// URL with a host")
    return text


def _file(value: Any, where: str) -> str:
    path = _nonempty(value, where)
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(where, f"cannot read {path}")
    return path


def _string_map(value: Any, where: str) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(where, "must be a table of strings, e.g. { Name = \"value\" }")
    for k, v in value.items():
        if not isinstance(v, str):
            raise ConfigError(f"{where}.{k}", "must be a string")
    return dict(value)


def _string_list(value: Any, where: str) -> Tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(where, "must be an array of strings")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise ConfigError(f"{where}[{i}]", "must be a string")
    return tuple(value)


def _url_list(value: Any, where: str) -> Tuple[str, ...]:
    items = _string_list(value, where)
    if not items:
        raise ConfigError(where, "needs at least one URL")
    for i, item in enumerate(items):
        _url(item, f"{where}[{i}]")
    return items


def _string_or_list(value: Any, where: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return _string_list(value, where)


def _levels(value: Any, where: str) -> Dict[str, str]:
    table = _string_map(value, where)
    for level in table:
        if level not in LEVEL_NAMES:
            raise ConfigError(f"{where}.{level}", f"unknown level (known: {', '.join(LEVEL_NAMES)})")
    return table


def _rate_limit(value: Any, where: str) -> Any:
    if value == "off":
        return "off"
    match = _RATE.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) <= 0 or match.group(2) == "0":
        raise ConfigError(where, "must look like \"120/1m\" (count/period) or \"off\"")
    return value


def _listen(value: Any, where: str) -> str:
    text = _string(value, where)
    parse_listen(text, where)
    return text


STRING = Kind("string", _string, '"text"')
NONEMPTY = Kind("string", _nonempty, '"text"')
INTEGER = Kind("integer", _integer, "8")
BOOL = Kind("boolean", _bool, "true")
DURATION = Kind("duration", _duration, '"10s"')
URL = Kind("URL", _url, '"https://…"')
FILE = Kind("file path", _file, '"/etc/…"')
STRING_MAP = Kind("table of strings", _string_map, '{ Name = "value" }')
STRING_LIST = Kind("array of strings", _string_list, '["a", "b"]')
URL_LIST = Kind("array of URLs", _url_list, '["https://…", "https://…"]')
STRING_OR_LIST = Kind("string or array of strings", _string_or_list, '["a@example.com"]')
LEVELS = Kind("table: level → string", _levels, '{ CRITICAL = "…" }')
RATE_LIMIT = Kind("rate (count/period) or \"off\"", _rate_limit, '"120/1m"')
LISTEN = Kind("host:port", _listen, '"127.0.0.1:9095"')


# -- values -----------------------------------------------------------------------


def parse_duration(value: Any, key: str = "duration") -> float:
    """``"500ms"``, ``"10s"``, ``"5m"``, ``"24h"``, ``"1h30m"``, ``"0"``/``"off"`` into seconds."""
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


def format_duration(seconds: float) -> str:
    """Seconds back into the config's duration notation (``3600.0`` → ``"1h"``)."""
    if seconds == 0:
        return "0"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _toml(value: Any, kind: Kind) -> str:
    if kind is DURATION and isinstance(value, (int, float)):
        return f'"{format_duration(float(value))}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f'{k} = "{v}"' for k, v in value.items()) + " }"
    return str(value)


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
