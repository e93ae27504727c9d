"""The seam between the bridge and the platforms: what a target renders, and how.

A target is a frozen dataclass built from its ``[[target]]`` table. ``render`` is a
pure function of the event: no I/O, no clock, so every platform's payload is
trivial to test. Delivery (``bridge.delivery``) sends what ``render`` returns.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Protocol, Set, Tuple, Type, TypeVar, Union

from ..errors import ConfigError
from ..event import AlertEvent

__all__ = [
    "TRUNCATED",
    "EmailMessage",
    "HttpRequest",
    "Options",
    "RateLimit",
    "Request",
    "Target",
    "get_type",
    "register",
    "registered_types",
    "truncate",
]

#: Appended wherever a formatter had to cut text to stay inside a platform limit.
TRUNCATED = "…(truncated)"


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request to a platform. ``ok`` lists the statuses that mean delivered
    (empty: any 2xx)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    ok: Tuple[int, ...] = ()


@dataclass(frozen=True)
class EmailMessage:
    """One e-mail; threading headers let mail clients group trigger and resolve."""

    subject: str
    body: str
    message_id: str
    in_reply_to: Optional[str] = None
    headers: Mapping[str, str] = field(default_factory=dict)


Request = Union[HttpRequest, EmailMessage]


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` requests per ``seconds`` (a token bucket of that size)."""

    count: int
    seconds: float

    _SPEC: ClassVar = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(ms|s|m|h)\s*$")
    _UNIT: ClassVar = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    @classmethod
    def parse(cls, spec: str) -> "RateLimit":
        """Parse ``"120/1m"``, ``"300/5m"``, ``"50/m"``; raise ValueError otherwise."""
        match = cls._SPEC.match(spec) if isinstance(spec, str) else None
        if not match:
            raise ValueError(f"rate limit must look like '120/1m', got {spec!r}")
        count, amount, unit = int(match.group(1)), match.group(2), match.group(3)
        seconds = (int(amount) if amount else 1) * cls._UNIT[unit]
        if count <= 0 or seconds <= 0:
            raise ValueError("rate limit count and period must be positive")
        return cls(count, seconds)

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


class Target(Protocol):
    """What delivery needs from a configured target."""

    name: str
    type_name: ClassVar[str]
    default_rate_limit: ClassVar[Optional[RateLimit]]

    def render(self, event: AlertEvent) -> Request:
        """Build the platform request for this event (pure)."""
        ...


T = TypeVar("T")
_REGISTRY: Dict[str, Type[Any]] = {}


def register(type_name: str) -> Callable[[Type[T]], Type[T]]:
    """Class decorator: make a target class available as ``type = "<type_name>"``."""

    def wrap(cls: Type[T]) -> Type[T]:
        if type_name in _REGISTRY and _REGISTRY[type_name] is not cls:
            raise RuntimeError(f"target type {type_name!r} registered twice")
        setattr(cls, "type_name", type_name)
        _REGISTRY[type_name] = cls
        return cls

    return wrap


def get_type(type_name: str) -> Type[Any]:
    """The class registered for ``type_name``; KeyError when unknown."""
    from . import _load_all

    _load_all()
    return _REGISTRY[type_name]


def registered_types() -> Tuple[str, ...]:
    from . import _load_all

    _load_all()
    return tuple(sorted(_REGISTRY))


# The Options methods below are named after the types they read (opts.str(...)),
# which shadows the builtins inside the class body, hence ``builtins.str`` there.


class Options:
    """Reads a target's config table, naming the full key in every error.

    ``finish()`` rejects keys nobody asked for, so a typo (``routng_key``) fails
    ``check-config`` instead of silently sending unauthenticated requests.
    """

    def __init__(self, prefix: builtins.str, table: Mapping[builtins.str, Any]) -> None:
        self.prefix = prefix
        self._table = dict(table)
        self._seen: Set[builtins.str] = set()

    def _get(self, key: builtins.str, default: Any, kind: type, required: builtins.bool) -> Any:
        self._seen.add(key)
        if key not in self._table:
            if required:
                raise ConfigError(f"{self.prefix}.{key}", "is required")
            return default
        value = self._table[key]
        if kind is float and isinstance(value, builtins.int) and not isinstance(value, builtins.bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is builtins.int and isinstance(value, builtins.bool)):
            raise ConfigError(f"{self.prefix}.{key}", f"must be a {kind.__name__}")
        return value

    def str(self, key: builtins.str, default: Optional[builtins.str] = None, *, required: builtins.bool = False) -> Any:
        value = self._get(key, default, builtins.str, required)
        if required and not value:
            raise ConfigError(f"{self.prefix}.{key}", "must not be empty")
        return value

    def int(self, key: builtins.str, default: Optional[builtins.int] = None, *, required: builtins.bool = False) -> Any:
        return self._get(key, default, builtins.int, required)

    def bool(self, key: builtins.str, default: builtins.bool = False) -> Any:
        return self._get(key, default, builtins.bool, False)

    def table(self, key: builtins.str, default: Optional[Mapping[builtins.str, Any]] = None) -> Dict[builtins.str, Any]:
        value = self._get(key, default if default is not None else {}, dict, False)
        return dict(value)

    def str_map(self, key: builtins.str, default: Optional[Mapping[builtins.str, builtins.str]] = None) -> Dict[builtins.str, builtins.str]:
        value = self.table(key, default)
        for k, v in value.items():
            if not isinstance(v, builtins.str):
                raise ConfigError(f"{self.prefix}.{key}.{k}", "must be a string")
        return value

    def str_list(self, key: builtins.str, default: Optional[List[builtins.str]] = None) -> Tuple[builtins.str, ...]:
        value = self._get(key, default if default is not None else [], list, False)
        for i, v in enumerate(value):
            if not isinstance(v, builtins.str):
                raise ConfigError(f"{self.prefix}.{key}[{i}]", "must be a string")
        return tuple(value)

    def levels(self, defaults: Mapping[builtins.str, builtins.str]) -> Dict[builtins.str, builtins.str]:
        """Per-level mapping (``levels = { CRITICAL = "P1" }``) merged over the defaults."""
        given = self.str_map("levels")
        unknown = set(given) - set(defaults)
        if unknown:
            raise ConfigError(
                f"{self.prefix}.levels.{sorted(unknown)[0]}",
                f"unknown level (known: {', '.join(defaults)})",
            )
        return {**defaults, **given}

    def finish(self) -> None:
        extra = sorted(set(self._table) - self._seen)
        if extra:
            from ..schema import unknown_key

            raise ConfigError(f"{self.prefix}.{extra[0]}", unknown_key(extra[0], sorted(self._seen), "this target type"))


def truncate(text: str, limit: int, marker: str = TRUNCATED) -> str:
    """Cut ``text`` to at most ``limit`` characters, ending in a visible marker."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[:limit]
    return text[: limit - len(marker)] + marker


def truncate_bytes(text: str, limit: int, marker: str = TRUNCATED) -> str:
    """Like :func:`truncate` but for a UTF-8 byte budget (never splits a character)."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    room = max(0, limit - len(marker.encode("utf-8")))
    return raw[:room].decode("utf-8", "ignore") + marker
