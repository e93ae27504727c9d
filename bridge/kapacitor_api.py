"""Read Kapacitor's current alert state: ``/kapacitor/v1/alerts/topics`` and their events.

The same two endpoints and shapes on kapacitord 1.5.9 and 1.8.x: a topic list
(``{"topics": [{"id": ..., "level": ...}]}``) and per topic its events, each the id's
latest state (``{"id", "state": {"level", "message", "details", "time", "duration"}}``).
An id an alert node publishes to its own topic (``main:<task>:alert2``) and to a named
``.topic()`` shows up in both: it is merged into one :class:`KapacitorEvent`.

Any failure (network, status, shape) raises :class:`KapacitorUnavailable` for the whole
read: reconcile must never act on a partial picture of Kapacitor.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote, urlsplit, urlunsplit

import certifi
import urllib3

from .event import LEVELS, level_code, parse_time

__all__ = ["KapacitorClient", "KapacitorEvent", "KapacitorState", "KapacitorUnavailable", "go_duration_ns"]

TOPICS_PATH = "/kapacitor/v1/alerts/topics"
#: A topic listing with more events than this is cut by us, not by Kapacitor: fail loudly.
_MAX_BYTES = 64 * 1024 * 1024
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


class KapacitorUnavailable(Exception):
    """Kapacitor could not be read completely; the message says why (never the token)."""


@dataclass(frozen=True)
class KapacitorEvent:
    """The latest state of one alert id, as Kapacitor holds it."""

    id: str
    level: str
    message: str
    details: str
    time: str
    duration_ns: int
    topics: Tuple[str, ...]


@dataclass(frozen=True)
class KapacitorState:
    """One complete read: every id of every topic, and when the read started."""

    events: Mapping[str, KapacitorEvent]
    topics: Tuple[str, ...]
    read_at: float


def go_duration_ns(text: Any) -> int:
    """Go's ``time.Duration.String()`` (``1m30.5s``, ``0s``, ``-2h``) or a number, in ns."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a duration: {text!r}")
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    if body == "0":
        return 0
    total, pos = 0.0, 0
    for match in _GO_DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(body):
        raise ValueError(f"not a duration: {text!r}")
    return sign * int(total)


def merge(events: List[KapacitorEvent]) -> Dict[str, KapacitorEvent]:
    """One event per id: the latest by time; at equal times the worst level. Topics united."""
    out: Dict[str, KapacitorEvent] = {}
    for ev in events:
        old = out.get(ev.id)
        if old is None:
            out[ev.id] = ev
            continue
        topics = tuple(sorted(set(old.topics) | set(ev.topics)))
        newer = _rank(ev) > _rank(old)
        keep = ev if newer else old
        out[ev.id] = KapacitorEvent(keep.id, keep.level, keep.message, keep.details, keep.time, keep.duration_ns, topics)
    return out


def _rank(ev: KapacitorEvent) -> Tuple[float, int]:
    try:
        when = parse_time(ev.time).timestamp()
    except ValueError:
        when = 0.0
    return when, level_code(ev.level)


def _event(topic: str, item: Any) -> KapacitorEvent:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not isinstance(item.get("state"), dict):
        raise ValueError(f"topic {topic!r}: an event is not {{id, state}}")
    state = item["state"]
    level = state.get("level")
    if level not in LEVELS:
        raise ValueError(f"topic {topic!r}, id {item['id']!r}: level {level!r} is not one of {', '.join(LEVELS)}")
    return KapacitorEvent(
        id=item["id"],
        level=level,
        message=str(state.get("message") or ""),
        details=str(state.get("details") or ""),
        time=str(state.get("time") or ""),
        duration_ns=go_duration_ns(state.get("duration", 0) or 0),
        topics=(topic,),
    )


class KapacitorClient:
    """GETs against one kapacitord; ``url`` may carry basic-auth credentials, ``token`` a bearer."""

    def __init__(self, url: str, *, token: Optional[str] = None, ca_file: Optional[str] = None, timeout: float = 10.0,
                 clock: Any = time.time) -> None:
        parts = urlsplit(url.rstrip("/"))
        # Credentials leave the URL (so no error message can quote them) for a header.
        self._base = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))
        self._headers: Dict[str, str] = {"Accept": "application/json", "User-Agent": "kapacitor-oncall-bridge/0.1"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif parts.username is not None:
            pair = f"{parts.username}:{parts.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        kwargs: Dict[str, Any] = {}
        if parts.scheme == "https":
            kwargs["ssl_context"] = ssl.create_default_context(cafile=ca_file or certifi.where())
        self._http = urllib3.PoolManager(num_pools=2, maxsize=2, timeout=urllib3.Timeout(total=timeout),
                                         retries=False, **kwargs)
        self._clock = clock

    def close(self) -> None:
        self._http.clear()

    def _get(self, path: str) -> Any:
        try:
            answer = self._http.request("GET", self._base + path, headers=self._headers, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise KapacitorUnavailable(f"GET {path}: {type(exc).__name__}: {_reason(exc)}") from None
        if answer.status != 200:
            text = answer.data[:300].decode("utf-8", "replace")
            raise KapacitorUnavailable(f"GET {path}: HTTP {answer.status}: {text}")
        if len(answer.data) > _MAX_BYTES:
            raise KapacitorUnavailable(f"GET {path}: answer larger than {_MAX_BYTES} bytes")
        try:
            return json.loads(answer.data)
        except ValueError as exc:
            raise KapacitorUnavailable(f"GET {path}: not JSON: {exc}") from None

    def read(self) -> KapacitorState:
        """Every topic's events, merged per id; raises :class:`KapacitorUnavailable`."""
        started = self._clock()
        listing = self._get(TOPICS_PATH)
        try:
            topics = [t["id"] for t in listing["topics"]]
            if not all(isinstance(t, str) for t in topics):
                raise TypeError("topic id is not a string")
        except (KeyError, TypeError) as exc:
            raise KapacitorUnavailable(f"GET {TOPICS_PATH}: unexpected shape ({exc})") from None
        events: List[KapacitorEvent] = []
        for topic in topics:
            path = f"{TOPICS_PATH}/{quote(topic, safe='')}/events"
            body = self._get(path)
            try:
                items = body["events"] or []
                events.extend(_event(topic, item) for item in items)
            except (KeyError, TypeError, ValueError) as exc:
                raise KapacitorUnavailable(f"GET {path}: unexpected shape ({exc})") from None
        return KapacitorState(events=merge(events), topics=tuple(topics), read_at=started)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason if reason is not None else exc)
    # urllib3 quotes the pool's host:port, never credentials (they were moved to a header).
    return text[:300]
