"""Helpers shared by the platform formatters: size budgets, stable keys, link templates.

Every platform documents some limit (PagerDuty 512 KB per event, Squadcast 30 KB,
Opsgenie 130 characters per message) and answers 4xx when it is crossed, which the
bridge must treat as permanent: the alert would be lost. The formatters therefore
measure what they send with the same encoder that produces the bytes
(:func:`json_bytes`) and cut the least important text first.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterable, Mapping, Optional
from urllib.parse import quote, urlsplit

from ..errors import ConfigError
from ..event import AlertEvent, format_time
from .base import TRUNCATED, Options

__all__ = [
    "EPOCH",
    "JSON_HEADERS",
    "LinkTemplate",
    "check_levels",
    "check_url",
    "episode_start",
    "hashed_key",
    "json_bytes",
    "json_size",
    "rfc3339",
    "scrub",
    "title",
    "truncate_json",
    "url_option",
]

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}

#: Kapacitor times are data times; nothing real predates the epoch, and Go's zero
#: time (0001-01-01) means "unset" to Alertmanager, so episode starts are clamped here.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def scrub(text: str) -> str:
    """Replace lone UTF-16 surrogates with U+FFFD.

    JSON's ``\\ud800`` escape decodes to a Python string that cannot be encoded as
    UTF-8; left in, it would crash the encoder (or the platform's parser).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def rfc3339(when: datetime) -> str:
    """:func:`bridge.event.format_time` with the year always four digits.

    ``strftime("%Y")`` does not zero-pad years before 1000 on glibc, which yields
    ``999-01-01T...``: not RFC 3339, and a 400 from every platform parsing it.
    """
    text = format_time(when)
    year, _, rest = text.partition("-")
    return f"{int(year):04d}-{rest}" if len(year) != 4 else text


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the exact bytes sent; size budgets are measured on these."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return scrub(text).encode("utf-8")


def json_size(obj: Any) -> int:
    """Encoded size of ``obj`` in bytes (see :func:`json_bytes`)."""
    return len(json_bytes(obj))


def truncate_json(text: str, budget: int, marker: str = TRUNCATED) -> str:
    """The longest prefix of ``text`` (plus ``marker`` when cut) whose JSON string
    encoding, quotes included, fits in ``budget`` bytes.

    Escapes make the encoded size differ from the character count (``"`` doubles,
    control characters grow sixfold), so the cut point is found by bisection on
    the encoded size. Returns ``""`` when not even the marker fits.
    """
    if json_size(text) <= budget:
        return text
    if json_size(marker) > budget:
        return ""
    lo, hi = 0, len(text)  # text[:lo] + marker fits; text[:hi] + marker does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if json_size(text[:mid] + marker) <= budget:
            lo = mid
        else:
            hi = mid
    return text[:lo] + marker


def hashed_key(key: str, limit: int) -> str:
    """``key`` itself when it fits, else a prefix plus ``~`` and 16 hex digits of SHA-256.

    Dedup keys must be identical for trigger and resolve and distinct per alert id;
    a plain cut would merge ids that share a long prefix (``cpu:host=...``).
    """
    if len(key) <= limit:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return key[: max(0, limit - 17)] + "~" + digest


def title(event: AlertEvent) -> str:
    """Kapacitor's message, or ``"<id> is <LEVEL>"`` (Kapacitor's own default) when blank."""
    text = event.message if event.message.strip() else f"{event.id} is {event.level}"
    return scrub(text)


def episode_start(event: AlertEvent) -> datetime:
    """When the current non-OK episode began: ``time - duration`` (Kapacitor's duration
    is ``lastTriggered - firstTriggered``), clamped to ``[epoch, time]``."""
    if event.duration_ns <= 0:
        return event.time
    lower = min(event.time, EPOCH)
    try:
        start = event.time - timedelta(microseconds=event.duration_ns // 1000)
    except OverflowError:
        return lower
    return max(start, lower)


def check_levels(opts: Options, levels: Mapping[str, str], allowed: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """Reject a ``levels`` value the platform would refuse, naming the key.

    Without ``allowed`` any non-empty text goes (free-form severity labels and tags).
    """
    choices = tuple(allowed) if allowed is not None else None
    for level, value in levels.items():
        if choices is not None and value not in choices:
            raise ConfigError(f"{opts.prefix}.levels.{level}", f"must be one of {', '.join(choices)}")
        if not value.strip():
            raise ConfigError(f"{opts.prefix}.levels.{level}", "must not be empty")
    return dict(levels)


def url_option(opts: Options, default: Optional[str] = None, key: str = "url") -> str:
    """Read an http(s) URL; ``default`` (the platform's public endpoint) when absent.

    Without a default the key is required (self-hosted receivers, URLs carrying a token).
    """
    value = opts.str(key, default, required=default is None)
    return check_url(opts, key, value)


def check_url(opts: Options, key: str, value: Any) -> str:
    """A bad scheme fails ``check-config`` instead of dead-lettering every alert."""
    parts = urlsplit(value if isinstance(value, str) else "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{opts.prefix}.{key}", "must be an http:// or https:// URL")
    return str(value)


_FIXED_LINK_VARS = ("id", "level", "series", "time")


@dataclass(frozen=True)
class LinkTemplate:
    """A ``string.Template`` for a back link: ``$id $level $series $time ${tag_<name>}``.

    Values are URL-encoded, so an id like ``cpu:host=web 1`` stays one path segment.
    ``string.Template`` cannot run code, which matters in a process holding on-call
    secrets. A tag the event lacks renders empty.
    """

    template: string.Template

    @classmethod
    def parse(cls, key: str, text: str) -> "LinkTemplate":
        """Validate ``text`` now so a typo fails ``check-config``, not every delivery."""
        template = string.Template(text)
        for match in template.pattern.finditer(text):
            if match.group("invalid") is not None:
                raise ConfigError(key, "invalid '$' placeholder (write $$ for a literal dollar)")
            name = match.group("named") or match.group("braced")
            if name and name not in _FIXED_LINK_VARS and not name.startswith("tag_"):
                known = ", ".join(f"${v}" for v in _FIXED_LINK_VARS)
                raise ConfigError(key, f"unknown variable ${name} (known: {known}, ${{tag_<name>}})")
        return cls(template)

    def render(self, event: AlertEvent) -> str:
        values: Dict[str, str] = {f"tag_{k}": quote(scrub(v), safe="") for k, v in event.tags.items()}
        values.update(
            id=quote(scrub(event.id), safe=""),
            level=event.level,
            series=quote(scrub(event.series_name), safe=""),
            time=quote(rfc3339(event.time), safe=""),
        )
        names = {m.group("named") or m.group("braced") for m in self.template.pattern.finditer(self.template.template)}
        for name in names:
            if name:
                values.setdefault(name, "")
        return self.template.substitute(values)
