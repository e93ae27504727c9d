"""Kapacitor alert events: parsed once at the edge into a frozen value.

Kapacitor's ``.post()`` / ``[[httppost]]`` handlers send the JSON of ``alert.Data``:
``id, message, details, time, duration, level, data, previousLevel, recoverable``.
``parse`` accepts exactly that shape and rejects anything a platform could not be
given safely, naming the offending field so Kapacitor's log says what is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Tuple

__all__ = ["LEVELS", "AlertEvent", "EventError", "level_code", "parse", "parse_time"]

LEVELS: Tuple[str, ...] = ("OK", "INFO", "WARNING", "CRITICAL")
_LEVEL_CODE = {name: code for code, name in enumerate(LEVELS)}

#: Kapacitor ids are series names plus group tags; anything longer is not a real id.
MAX_ID_CHARS = 4096


class EventError(ValueError):
    """The body is not a usable Kapacitor alert event; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def level_code(level: str) -> int:
    """OK=0, INFO=1, WARNING=2, CRITICAL=3: the order Kapacitor uses."""
    return _LEVEL_CODE[level]


@dataclass(frozen=True)
class AlertEvent:
    """One Kapacitor alert event, validated.

    ``raw`` keeps the decoded original so targets that forward Kapacitor's own JSON
    (Grafana OnCall's Kapacitor integration, plain webhooks) send it unchanged.
    """

    id: str
    level: str
    time: datetime
    message: str = ""
    details: str = ""
    duration_ns: int = 0
    previous_level: str = "OK"
    recoverable: bool = True
    data: Mapping[str, Any] = field(default_factory=dict, compare=False)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_recovery(self) -> bool:
        """Level OK means the condition cleared: platforms resolve the incident."""
        return self.level == "OK"

    @property
    def series(self) -> Mapping[str, Any]:
        """The first series of ``data`` (Kapacitor sends one per event), or ``{}``."""
        series = self.data.get("series") if isinstance(self.data, Mapping) else None
        if isinstance(series, list) and series and isinstance(series[0], Mapping):
            return series[0]
        return {}

    @property
    def series_name(self) -> str:
        """Measurement name of the alerting series; falls back to the id's prefix."""
        name = self.series.get("name")
        if isinstance(name, str) and name:
            return name
        return self.id.split(":", 1)[0]

    @property
    def tags(self) -> Mapping[str, str]:
        """Tags of the alerting series (string values only)."""
        tags = self.series.get("tags")
        if not isinstance(tags, Mapping):
            return {}
        return {str(k): str(v) for k, v in tags.items()}

    @property
    def fields(self) -> Mapping[str, Any]:
        """Field values of the last row of the series, keyed by column (time excluded)."""
        columns = self.series.get("columns")
        values = self.series.get("values")
        if not isinstance(columns, list) or not isinstance(values, list) or not values:
            return {}
        row = values[-1]
        if not isinstance(row, list):
            return {}
        return {str(c): v for c, v in zip(columns, row) if c != "time"}

    def to_json(self) -> bytes:
        """The event as Kapacitor would post it (the original JSON when we have it)."""
        if self.raw:
            return json.dumps(self.raw, separators=(",", ":"), ensure_ascii=False).encode()
        body = {
            "id": self.id,
            "message": self.message,
            "details": self.details,
            "time": format_time(self.time),
            "duration": self.duration_ns,
            "level": self.level,
            "data": dict(self.data),
            "previousLevel": self.previous_level,
            "recoverable": self.recoverable,
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, microseconds only when non-zero."""
    t = t.astimezone(timezone.utc)
    # strftime's %Y does not zero-pad years below 1000 on glibc; RFC 3339 needs four digits.
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_time(text: str) -> datetime:
    """Parse Kapacitor's RFC 3339 time (nanosecond fractions, ``Z`` or an offset).

    Python's ``fromisoformat`` takes at most microseconds before 3.11, so the fraction
    is cut to six digits here; alert times are data times, microseconds are plenty.
    """
    if not isinstance(text, str) or len(text) < 20 or len(text) > 64:
        raise ValueError("not an RFC 3339 timestamp")
    body, sep, rest = text.partition(".")
    if sep:
        digits = 0
        while digits < len(rest) and rest[digits].isdigit():
            digits += 1
        if digits == 0:
            raise ValueError("empty fraction")
        frac, zone = rest[:digits], rest[digits:]
        text = f"{body}.{frac[:6].ljust(6, '0')}{zone}"
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if "T" not in text and "t" not in text:
        raise ValueError("missing 'T' between date and time")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("missing time zone")
    return parsed.astimezone(timezone.utc)


def _want(obj: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = obj.get(key, default)
    if value is None and default is not None:
        return default
    if kind is int and isinstance(value, bool):
        raise EventError(key, "must be an integer")
    if not isinstance(value, kind):
        raise EventError(key, f"must be {'an integer' if kind is int else 'a ' + kind.__name__}")
    return value


def parse(body: bytes) -> AlertEvent:
    """Validate a Kapacitor alert body; raise :class:`EventError` naming the bad field."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError("body", f"not UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise EventError("body", "JSON nested too deeply") from None
    except ValueError as exc:
        raise EventError("body", f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventError("body", "must be a JSON object")
    if _SURROGATE_ESCAPE.search(text):
        where = _unpaired_surrogate(obj)
        if where is not None:
            # JSON allows "\ud800" alone; no platform (and no UTF-8 encoder) does.
            raise EventError(where, "contains an unpaired UTF-16 surrogate escape")

    if "id" not in obj:
        raise EventError("id", "missing")
    ident = obj["id"]
    if not isinstance(ident, str) or not ident.strip():
        raise EventError("id", "must be a non-empty string")
    if len(ident) > MAX_ID_CHARS:
        raise EventError("id", f"longer than {MAX_ID_CHARS} characters")

    if "level" not in obj:
        raise EventError("level", "missing")
    level = obj["level"]
    if not isinstance(level, str) or level not in _LEVEL_CODE:
        raise EventError("level", f"must be one of {', '.join(LEVELS)}")

    if "time" not in obj:
        raise EventError("time", "missing")
    try:
        when = parse_time(obj["time"])
    except (ValueError, TypeError, OverflowError) as exc:
        raise EventError("time", f"must be an RFC 3339 timestamp in years 1-9999 UTC ({exc})") from None

    previous = obj.get("previousLevel")
    if previous is None:
        previous = "OK"
    if not isinstance(previous, str) or previous not in _LEVEL_CODE:
        raise EventError("previousLevel", f"must be one of {', '.join(LEVELS)}")
    duration = _want(obj, "duration", int, 0)
    data = obj.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EventError("data", "must be an object")
    return AlertEvent(
        id=ident,
        level=level,
        time=when,
        message=_want(obj, "message", str, ""),
        details=_want(obj, "details", str, ""),
        duration_ns=duration,
        previous_level=previous,
        recoverable=_want(obj, "recoverable", bool, True),
        data=data,
        raw=obj,
    )


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_FIELDS = frozenset(("id", "message", "details", "time", "duration", "level", "data", "previousLevel", "recoverable"))


def _unpaired_surrogate(obj: Mapping[str, Any]) -> Optional[str]:
    """The top-level field holding a lone surrogate (``body`` if not a known field), or None.

    Iterative, because ``data`` may be nested as deep as the JSON decoder allows.
    """
    for key, value in obj.items():
        stack: list[Any] = [key, value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return key if key in _FIELDS and isinstance(key, str) and key.isascii() else "body"
            elif isinstance(item, dict):
                for k, v in item.items():
                    stack.append(k)
                    stack.append(v)
            elif isinstance(item, list):
                stack.extend(item)
    return None


def _reject_constant(name: str) -> Optional[float]:
    """NaN and Infinity are not JSON; platforms reject them, so do we."""
    raise ValueError(f"{name} is not valid JSON")


