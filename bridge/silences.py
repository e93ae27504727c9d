"""Silences: hold deliveries of matching alerts for a while (maintenance), then tell the
platform only each id's latest state.

A silence is a set of matchers (all must match) and a time window, kept in the store
(``silences`` table, schema migration 3), so it survives restarts and is shared by the
CLI, the API and the page. While one matches, a row that reaches the head of its id's
queue is finished as ``silenced`` instead of being sent: it stays on file and on the
page. When no active silence matches an id's newest silenced row any more, the id is
*released* in one transaction: the newest row goes back to ``pending`` if the platform
should hear it (a non-OK state, or an OK for an incident the platform believes is open)
and every other silenced row of the id becomes ``superseded``. So a maintenance window
yields at most one notification per id, and a resolve of an alert the platform never
heard of is not sent at all.

Matchers: ``NAME OP VALUE`` with OP one of ``=``, ``!=``, ``=~``, ``!~`` (regexes match
the whole value, as in Alertmanager). NAME is ``id``, ``target``, ``level``, or a tag of
the event's series (a missing tag is the empty string). ``id=~cpu:host=web-.*``: the
name is the leading word, the operator the first one after it, the rest is the value.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError, StoreError
from .event import AlertEvent, EventError, parse
from .log import get_logger

__all__ = [
    "Matcher",
    "Silence",
    "SilenceError",
    "Silencer",
    "add",
    "expire",
    "list_silences",
    "matches",
    "parse_duration",
    "parse_matcher",
    "release",
    "row_fields",
]

log = get_logger("bridge.silences")

OPS = ("=~", "!~", "!=", "=")
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|=)(.*)\Z", re.S)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: Longest silence accepted: a forgotten silence must not hide pages for a year.
MAX_SECONDS = 30 * 86400.0


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


# -- pure parts ----------------------------------------------------------------------


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


def fields_of(target: str, event: AlertEvent) -> Dict[str, str]:
    """What matchers can test: the event's series tags, then id, target and level."""
    tags = event.series.get("tags") if event.series else None
    fields = {str(k): str(v) for k, v in tags.items()} if isinstance(tags, Mapping) else {}
    fields.update(id=event.id, target=target, level=event.level)
    return fields


def matches(silence: Silence, fields: Mapping[str, str]) -> bool:
    return all(m.test(fields) for m in silence.matchers)


def _decode(row: Sequence[object]) -> Silence:
    lines = str(row[1]).split("\n")
    return Silence(
        id=str(row[0]),
        matchers=tuple(parse_matcher(line) for line in lines if line),
        starts_at=float(row[2]),  # type: ignore[arg-type]
        ends_at=float(row[3]),  # type: ignore[arg-type]
        comment=str(row[4]),
        created_by=str(row[5]),
        created_at=float(row[6]),  # type: ignore[arg-type]
        expired_at=None if row[7] is None else float(row[7]),  # type: ignore[arg-type]
    )


# -- store operations (a cursor inside the caller's transaction) -----------------------

_COLUMNS = "id, matchers, starts_at, ends_at, comment, created_by, created_at, expired_at"


def list_silences(cur: sqlite3.Cursor | sqlite3.Connection, *, include_ended: bool = False,
                  now: Optional[float] = None) -> List[Silence]:
    """Silences on file, ending soonest first; by default only those not ended or expired."""
    now = time.time() if now is None else now
    if include_ended:
        rows = cur.execute(f"SELECT {_COLUMNS} FROM silences ORDER BY ends_at").fetchall()
    else:
        rows = cur.execute(
            f"SELECT {_COLUMNS} FROM silences WHERE expired_at IS NULL AND ends_at > ? ORDER BY ends_at", (now,)
        ).fetchall()
    return [_decode(r) for r in rows]


def add(
    cur: sqlite3.Cursor | sqlite3.Connection,
    matchers: Sequence[Matcher],
    seconds: float,
    comment: str,
    created_by: str,
    now: Optional[float] = None,
) -> Silence:
    """Store a new silence starting now; refuses one without matchers or comment."""
    if not matchers:
        raise SilenceError("a silence needs at least one matcher (it would silence everything)")
    if not comment.strip():
        raise SilenceError("a silence needs a comment: say why, so the next person on call knows")
    if not 0 < seconds <= MAX_SECONDS:
        raise SilenceError("duration must be more than 0 and at most 30d")
    now = time.time() if now is None else now
    silence = Silence(
        id=secrets.token_hex(6),
        matchers=tuple(matchers),
        starts_at=now,
        ends_at=now + seconds,
        comment=comment.strip()[:500],
        created_by=created_by[:100],
        created_at=now,
        expired_at=None,
    )
    cur.execute(
        f"INSERT INTO silences ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        (silence.id, "\n".join(str(m) for m in matchers), silence.starts_at, silence.ends_at,
         silence.comment, silence.created_by, silence.created_at),
    )
    return silence


def expire(cur: sqlite3.Cursor | sqlite3.Connection, silence_id: str, now: Optional[float] = None) -> Silence:
    """End a silence now (kept on file, marked expired); its ids are released on the next pass."""
    now = time.time() if now is None else now
    row = cur.execute(f"SELECT {_COLUMNS} FROM silences WHERE id = ?", (silence_id,)).fetchone()
    if row is None:
        raise SilenceError(f"no silence with id {silence_id!r} (see `silence list`)")
    found = _decode(row)
    if not found.active(now):
        raise SilenceError(f"silence {silence_id} has already ended")
    cur.execute("UPDATE silences SET expired_at = ? WHERE id = ?", (now, silence_id))
    return _decode(cur.execute(f"SELECT {_COLUMNS} FROM silences WHERE id = ?", (silence_id,)).fetchone())


def _told_open(cur: sqlite3.Cursor, target: str, key: str) -> bool:
    """Whether the platform believes ``key`` is firing (ledger when present, else last level sent)."""
    tables = {r[0] for r in cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "ledger" in tables:
        row = cur.execute("SELECT open FROM ledger WHERE target = ? AND key = ?", (target, key)).fetchone()
        return bool(row and row[0])
    row = cur.execute("SELECT level FROM last_forwarded WHERE target = ? AND key = ?", (target, key)).fetchone()
    return bool(row and row[0] != "OK")


def row_fields(target: str, body: bytes, key: str, level: str) -> Dict[str, str]:
    try:
        return fields_of(target, parse(body))
    except EventError:
        return {"id": key, "target": target, "level": level}


def release(cur: sqlite3.Cursor, now: Optional[float] = None) -> List[Tuple[str, str, str]]:
    """Release every id whose newest silenced row no active silence matches any more.

    Returns ``(target, key, outcome)`` per released id, outcome ``sent`` (the newest row is
    pending again) or ``dropped`` (nothing to tell the platform). Run inside the writer's
    transaction (:meth:`bridge.outbox.Outbox.transact`) so the index reloads with it."""
    now = time.time() if now is None else now
    active = list_silences(cur, now=now)
    newest: Dict[Tuple[str, str], Tuple[int, str, bytes]] = {}
    for seq, target, key, level, body in cur.execute(
        "SELECT seq, target, key, level, body FROM outbox WHERE state = 'silenced' ORDER BY seq"
    ).fetchall():
        newest[(target, key)] = (seq, level, bytes(body))
    released: List[Tuple[str, str, str]] = []
    for (target, key), (seq, level, body) in newest.items():
        fields = row_fields(target, body, key, level)
        if any(matches(s, fields) for s in active):
            continue
        later = cur.execute(
            "SELECT 1 FROM outbox WHERE target = ? AND key = ? AND seq > ? AND state IN ('pending','inflight')",
            (target, key, seq),
        ).fetchone()
        send = later is None and (level != "OK" or _told_open(cur, target, key))
        cur.execute(
            "UPDATE outbox SET state = 'superseded', done_at = ? WHERE target = ? AND key = ? AND state = 'silenced'"
            " AND seq != ?",
            (now, target, key, seq if send else -1),
        )
        if send:
            cur.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, queued_at = ?,"
                " done_at = NULL, last_error = NULL, last_status = NULL WHERE seq = ?",
                (now, now, seq),
            )
        released.append((target, key, "sent" if send else "dropped"))
    return released


# -- the running bridge's side --------------------------------------------------------


Transact = Callable[[Callable[[sqlite3.Cursor], object]], object]


def _releasable(conn: sqlite3.Connection, active: Sequence[Silence]) -> bool:
    """Read-only pre-check: is there an id whose newest silenced row no silence matches?"""
    newest: Dict[Tuple[str, str], Tuple[str, bytes]] = {}
    for target, key, level, body in conn.execute(
        "SELECT target, key, level, body FROM outbox WHERE state = 'silenced' ORDER BY seq"
    ):
        newest[(target, key)] = (level, bytes(body))
    return any(
        not any(matches(s, row_fields(target, body, key, level)) for s in active)
        for (target, key), (level, body) in newest.items()
    )


class Silencer:
    """Keeps the active silences in memory (re-read from the store every ``interval``) for
    the delivery hook :meth:`holds`, and releases ids whose silences ended. One thread;
    the store is the truth (a silence added by the CLI in another process counts within
    ``interval``)."""

    def __init__(self, path: str, transact: Transact, *, interval: float = 1.0,
                 clock: Callable[[], float] = time.time,
                 on_read: Optional[Callable[[int], None]] = None) -> None:
        self.path = path
        #: Called with the number of active silences after every read (a metrics gauge).
        self.on_read = on_read
        self._transact = transact
        self.interval = interval
        self._clock = clock
        self._active: Tuple[Silence, ...] = ()
        self._conn: Optional[sqlite3.Connection] = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _read(self) -> Tuple[Tuple[Silence, ...], bool]:
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0,
                                             check_same_thread=False)
            now = self._clock()
            try:
                active = tuple(s for s in list_silences(self._conn, now=now) if s.active(now))
                releasable = _releasable(self._conn, active)
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: reading silences failed ({exc})") from None
        if self.on_read is not None:
            self.on_read(len(active))
        return active, releasable

    def refresh(self) -> None:
        """Re-read the silences now and run a release pass soon (after an add or expire)."""
        self._active, _ = self._read()
        self._wake.set()

    def holds(self, target: str, key: str, level: str, body: bytes) -> Optional[str]:
        """The id of an active silence matching this row, or None (the delivery hook)."""
        now = self._clock()
        active = [s for s in self._active if s.active(now)]
        if not active:
            return None
        fields = row_fields(target, body, key, level)
        for silence in active:
            if matches(silence, fields):
                return silence.id
        return None

    def start(self) -> None:
        """Load the silences (before delivery starts), then run the release loop."""
        self._active, _ = self._read()
        self._thread = threading.Thread(target=self._run, name="silences", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def tick(self) -> List[Tuple[str, str, str]]:
        """One pass: reload silences; release (in the writer) what no longer matches."""
        self._active, releasable = self._read()
        if not releasable:
            return []
        released = self._transact(lambda cur: release(cur, self._clock()))
        assert isinstance(released, list)
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


def parse_matchers(lines: Iterable[str]) -> List[Matcher]:
    """Several matchers, one per item; blank items are ignored."""
    return [parse_matcher(line) for line in lines if line.strip()]


def config_error(exc: SilenceError) -> ConfigError:
    """For CLI paths that report errors as config errors (field ``silence``)."""
    return ConfigError("silence", str(exc))


def dumps(silences: Iterable[Silence], now: float) -> str:
    return json.dumps([s.as_json(now) for s in silences], indent=2)
