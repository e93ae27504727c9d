"""Silences: hold deliveries of matching alerts for a while (maintenance), then tell the
platform only each id's latest state.

A silence is a set of matchers (all must match) and a time window, kept in the store
(SQLite: ``silences`` table, schema 3; PostgreSQL: ``oncall_silences``, schema 3), so it
survives restarts and is shared by the CLI, the API, the page and every replica. While
one matches, a row that reaches the head of its id's queue is finished as ``silenced``
instead of being sent: it stays on file and on the page. When no active silence matches
an id's newest silenced row any more, the id is *released* in one transaction: the newest
row goes back to ``pending`` if the platform should hear it (a non-OK state, or an OK for
an incident the platform believes is open) and every other silenced row of the id becomes
``superseded``. So a maintenance window yields at most one notification per id, and a
resolve of an alert the platform never heard of is not sent at all.

This module holds the rules only (parsing, validation, matching, what a release does);
the stores apply them (:mod:`bridge.silences_sqlite`, :mod:`bridge.pg.silences`), and
:class:`Silencer` runs them in a serving bridge through the :class:`bridge.backend.Store`.

Matchers: ``NAME OP VALUE`` with OP one of ``=``, ``!=``, ``=~``, ``!~`` (regexes match
the whole value, as in Alertmanager). NAME is ``id``, ``target``, ``level``, or a tag of
the event's series (a missing tag is the empty string). ``id=~cpu:host=web-.*``: the
name is the leading word, the operator the first one after it, the rest is the value.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple

from .errors import StoreError
from .event import AlertEvent, EventError, parse
from .log import get_logger

__all__ = [
    "Held",
    "Matcher",
    "Released",
    "Silence",
    "SilenceError",
    "SilenceStore",
    "Silencer",
    "check_expirable",
    "decode",
    "encode_matchers",
    "fields_of",
    "holding",
    "matches",
    "new_silence",
    "newest_per_id",
    "parse_duration",
    "parse_matcher",
    "parse_matchers",
    "releasable",
    "row_fields",
    "should_send",
]

log = get_logger("bridge.silences")

OPS = ("=~", "!~", "!=", "=")
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|=)(.*)\Z", re.S)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: Longest silence accepted: a forgotten silence must not hide pages for a year.
MAX_SECONDS = 30 * 86400.0
#: Columns of a stored silence, in :func:`decode` order (the same in both backends).
COLUMNS = "id, matchers, starts_at, ends_at, comment, created_by, created_at, expired_at"


class SilenceError(ValueError):
    """A matcher, duration or silence id that cannot be used; the message says which."""


@dataclass(frozen=True)
class Matcher:
    """``name op value``; regexes are compiled anchored at both ends."""

    name: str
    op: str
    value: str

    def test(self, fields: Mapping[str, str]) -> bool:
        got = fields.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        hit = re.fullmatch(self.value, got) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


@dataclass(frozen=True)
class Silence:
    """One silence as stored."""

    id: str
    matchers: Tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    comment: str
    created_by: str
    created_at: float
    expired_at: Optional[float]

    def active(self, now: float) -> bool:
        return self.expired_at is None and self.starts_at <= now < self.ends_at

    @property
    def text(self) -> str:
        return ", ".join(str(m) for m in self.matchers)

    def as_json(self, now: float) -> Dict[str, object]:
        return {
            "id": self.id,
            "matchers": [str(m) for m in self.matchers],
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "comment": self.comment,
            "created_by": self.created_by,
            "active": self.active(now),
            "expired_at": self.expired_at,
        }


@dataclass(frozen=True)
class Held:
    """The newest silenced row of an id (what a release would send)."""

    seq: int
    target: str
    key: str
    level: str
    body: bytes


#: ``(target, key, outcome)`` per released id; outcome ``sent`` (the newest row is pending
#: again) or ``dropped`` (nothing to tell the platform).
Released = Tuple[str, str, str]


# -- parsing and validation ------------------------------------------------------------


def parse_matcher(text: str) -> Matcher:
    """``'id=~cpu:host=web-.*'`` → ``Matcher('id', '=~', 'cpu:host=web-.*')``."""
    found = _MATCHER.match(text)
    if found is None:
        raise SilenceError(f"matcher {text!r}: expected NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX")
    name, op, value = found.group(1), found.group(2), found.group(3).strip()
    if op in ("=~", "!~"):
        try:
            re.compile(value)
        except re.error as exc:
            raise SilenceError(f"matcher {text!r}: bad regular expression: {exc}") from None
    return Matcher(name, op, value)


def parse_matchers(lines: Iterable[str]) -> List[Matcher]:
    """Several matchers, one per item; blank items are ignored."""
    return [parse_matcher(line) for line in lines if line.strip()]


def parse_duration(text: str) -> float:
    """``2h``, ``90m``, ``1h30m``, ``1d`` → seconds (more than 0, at most 30 days)."""
    raw = text.strip()
    pos, total = 0, 0.0
    for part in _DURATION.finditer(raw):
        if part.start() != pos:
            break
        total += float(part.group(1)) * _UNITS[part.group(2)]
        pos = part.end()
    if not raw or pos != len(raw):
        raise SilenceError(f"duration {text!r}: expected e.g. 30m, 2h, 1h30m, 1d")
    if total <= 0 or total > MAX_SECONDS:
        raise SilenceError(f"duration {text!r}: must be more than 0 and at most 30d")
    return total


def new_silence(
    matchers: Sequence[Matcher], seconds: float, comment: str, created_by: str, now: Optional[float] = None
) -> Silence:
    """A new silence starting now; refuses one without matchers or comment (nothing stored yet)."""
    if not matchers:
        raise SilenceError("a silence needs at least one matcher (it would silence everything)")
    if not comment.strip():
        raise SilenceError("a silence needs a comment: say why, so the next person on call knows")
    if not 0 < seconds <= MAX_SECONDS:
        raise SilenceError("duration must be more than 0 and at most 30d")
    now = time.time() if now is None else now
    return Silence(
        id=secrets.token_hex(6),
        matchers=tuple(matchers),
        starts_at=now,
        ends_at=now + seconds,
        comment=comment.strip()[:500],
        created_by=created_by[:100],
        created_at=now,
        expired_at=None,
    )


def check_expirable(found: Optional[Silence], silence_id: str, now: float) -> Silence:
    """The silence to expire, or the error an operator should see."""
    if found is None:
        raise SilenceError(f"no silence with id {silence_id!r} (see `silence list`)")
    if not found.active(now):
        raise SilenceError(f"silence {silence_id} has already ended")
    return found


def encode_matchers(matchers: Iterable[Matcher]) -> str:
    """Stored form: one matcher per line (a value cannot hold a newline the parser keeps)."""
    return "\n".join(str(m) for m in matchers)


def decode(row: Sequence[object]) -> Silence:
    """A stored row (:data:`COLUMNS` order) back into a :class:`Silence`."""
    lines = str(row[1]).split("\n")
    return Silence(
        id=str(row[0]),
        matchers=tuple(parse_matchers(lines)),
        starts_at=float(row[2]),  # type: ignore[arg-type]
        ends_at=float(row[3]),  # type: ignore[arg-type]
        comment=str(row[4]),
        created_by=str(row[5]),
        created_at=float(row[6]),  # type: ignore[arg-type]
        expired_at=None if row[7] is None else float(row[7]),  # type: ignore[arg-type]
    )


# -- matching and releasing --------------------------------------------------------------


def fields_of(target: str, event: AlertEvent) -> Dict[str, str]:
    """What matchers can test: the event's series tags, then id, target and level."""
    tags = event.series.get("tags") if event.series else None
    fields = {str(k): str(v) for k, v in tags.items()} if isinstance(tags, Mapping) else {}
    fields.update(id=event.id, target=target, level=event.level)
    return fields


def row_fields(target: str, body: bytes, key: str, level: str) -> Dict[str, str]:
    """:func:`fields_of` for a stored row (a body that no longer parses still has id and level)."""
    try:
        return fields_of(target, parse(body))
    except EventError:
        return {"id": key, "target": target, "level": level}


def matches(silence: Silence, fields: Mapping[str, str]) -> bool:
    return all(m.test(fields) for m in silence.matchers)


def holding(active: Iterable[Silence], fields: Mapping[str, str]) -> Optional[str]:
    """The id of the first silence in ``active`` that matches, or None."""
    for silence in active:
        if matches(silence, fields):
            return silence.id
    return None


def newest_per_id(rows: Iterable[Held]) -> List[Held]:
    """The newest silenced row of each ``(target, key)`` (rows in any order)."""
    newest: Dict[Tuple[str, str], Held] = {}
    for row in rows:
        seen = newest.get((row.target, row.key))
        if seen is None or row.seq > seen.seq:
            newest[(row.target, row.key)] = row
    return sorted(newest.values(), key=lambda h: (h.target, h.key))


def releasable(newest: Iterable[Held], active: Sequence[Silence]) -> List[Held]:
    """Of each id's newest silenced row, those no active silence matches any more."""
    return [h for h in newest if holding(active, row_fields(h.target, h.body, h.key, h.level)) is None]


def should_send(level: str, *, newer_queued: bool, told_open: bool) -> bool:
    """Whether a released row goes out: not when a newer event of the id is already queued
    (it carries the newer state), and a resolve only when the platform believes the id fires."""
    return not newer_queued and (level != "OK" or told_open)


# -- the running bridge's side ------------------------------------------------------------


class SilenceStore(Protocol):
    """What :class:`Silencer` needs from the store (both backends provide it)."""

    def list_silences(self, *, include_ended: bool = False, now: Optional[float] = None) -> List[Silence]: ...
    def release_silences(self, now: Optional[float] = None) -> List[Released]: ...


class Silencer:
    """Keeps the active silences in memory (re-read from the store every ``interval``) for
    the delivery hook :meth:`holds`, and releases ids whose silences ended. One thread;
    the store is the truth: a silence added by the CLI, another process or another
    replica counts here within ``interval``. On PostgreSQL the release itself runs on one
    replica at a time (the ``silences`` singleton job); the others' passes do nothing."""

    def __init__(self, store: SilenceStore, *, interval: float = 1.0,
                 clock: Callable[[], float] = time.time,
                 on_read: Optional[Callable[[int], None]] = None) -> None:
        self.store = store
        #: Called with the number of active silences after every read (a metrics gauge).
        self.on_read = on_read
        self.interval = interval
        self._clock = clock
        self._active: Tuple[Silence, ...] = ()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _read(self) -> Tuple[Silence, ...]:
        now = self._clock()
        active = tuple(s for s in self.store.list_silences(now=now) if s.active(now))
        if self.on_read is not None:
            self.on_read(len(active))
        return active

    def refresh(self) -> None:
        """Re-read the silences now and run a release pass soon (after an add or expire)."""
        self._active = self._read()
        self._wake.set()

    def poke(self) -> None:
        """Silences changed elsewhere: re-read them (and release) now, in the silencer's thread."""
        self._wake.set()

    def holds(self, target: str, key: str, level: str, body: bytes) -> Optional[str]:
        """The id of an active silence matching this row, or None (the delivery hook)."""
        now = self._clock()
        active = [s for s in self._active if s.active(now)]
        if not active:
            return None
        return holding(active, row_fields(target, body, key, level))

    def start(self) -> None:
        """Load the silences (before delivery starts), then run the release loop."""
        self._active = self._read()
        self._thread = threading.Thread(target=self._run, name="silences", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def tick(self) -> List[Released]:
        """One pass: reload silences; release what no longer matches."""
        self._active = self._read()
        released = self.store.release_silences(self._clock())
        for target, key, outcome in released:
            log.info("silence.released", target=target, id=key, outcome=outcome)
        return released

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except (StoreError, TimeoutError) as exc:
                log.error("silence.store_error", error=str(exc))
            except Exception:  # noqa: BLE001 - the release loop must outlive a bug
                log.error("silence.crashed", exc_info=True)
            self._wake.wait(self.interval)
            self._wake.clear()


def dumps(silences: Iterable[Silence], now: float) -> str:
    return json.dumps([s.as_json(now) for s in silences], indent=2)
