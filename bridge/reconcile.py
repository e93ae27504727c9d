"""Reconcile with Kapacitor: make the platforms' open incidents converge to Kapacitor's state.

Kapacitor posts an alert once and never retries, so a POST refused while the bridge
was down, or lost before the outbox existed, leaves the platform wrong for good: an
incident open after recovery, or a trigger never seen. At start and every
``reconcile_interval`` the bridge reads every topic's events from Kapacitor's API and
compares them with the incident ledger:

* an incident open on a platform whose id is OK in Kapacitor, or gone from it
  (task deleted), gets a resolve;
* an id non-OK in Kapacitor whose routed target has no open incident at that level
  gets a trigger.

Both are ordinary (``synthetic``) outbox rows, so they are durable, ordered per id
and retried like any event. Only idle keys are touched (no pending or in-flight row:
the queue already carries the truth), only targets that ``routes``/``default_target``
name are managed, and a Kapacitor that cannot be read completely means no action at
all: silence from Kapacitor never resolves anything.

:func:`plan` is pure (Kapacitor state + ledger in, actions out); :class:`Reconciler`
does the I/O around it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from .config import KapacitorConfig
from .event import format_time, parse_time
from .kapacitor_api import KapacitorClient, KapacitorEvent, KapacitorState, KapacitorUnavailable
from .ledger import Incident
from .log import get_logger
from .backend import Store

__all__ = [
    "Action",
    "Reconciler",
    "Routes",
    "plan",
    "reconcile_file",
    "resolve_body",
    "routes_of",
    "trigger_body",
]

log = get_logger("bridge.reconcile")

@dataclass(frozen=True)
class Routes:
    """``routes = { "<topic or glob>" = "<target>" }`` and ``default_target``.

    Exact topic names win over globs; among globs the first written wins.
    """

    rules: Tuple[Tuple[str, str], ...] = ()
    default_target: Optional[str] = None
    #: A target name that stands for several delivery targets (Alertmanager HA members).
    fanout: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)

    def members(self, target: str) -> Tuple[str, ...]:
        return self.fanout.get(target, (target,))

    def target_for(self, topics: Iterable[str]) -> Optional[str]:
        """The target for an id published to ``topics``; None when no rule matches."""
        names = sorted(topics)
        for pattern, target in self.rules:
            if pattern in names:
                return target
        for pattern, target in self.rules:
            if any(fnmatch.fnmatchcase(name, pattern) for name in names):
                return target
        return None

    @property
    def managed(self) -> Set[str]:
        """Targets reconcile may act on: those the routes and the default name."""
        named = {target for _, target in self.rules}
        if self.default_target:
            named.add(self.default_target)
        return {member for target in named for member in self.members(target)}


@dataclass(frozen=True)
class Action:
    """One difference: ``resolve`` (level OK) or ``trigger`` (a non-OK level)."""

    kind: str
    target: str
    key: str
    level: str
    reason: str
    body: bytes = field(default=b"", repr=False, compare=False)

    def line(self) -> str:
        """``resolve <target> <id>`` / ``trigger <target> <id> <level>`` (the CLI's output)."""
        if self.kind == "resolve":
            return f"resolve {self.target} {self.key}"
        return f"trigger {self.target} {self.key} {self.level}"

    def as_dict(self) -> Dict[str, str]:
        return {"action": self.kind, "target": self.target, "id": self.key, "level": self.level, "reason": self.reason}


def plan(
    state: KapacitorState,
    incidents: Sequence[Incident],
    routes: Routes,
    busy: Callable[[str, str], bool],
    now: float,
) -> List[Action]:
    """Pure: the resolves and triggers that bring the managed targets to Kapacitor's state.

    ``busy(target, key)`` is true when the outbox still has a row for the key (the queue
    will deliver the truth; acting now would race it). Incidents told after the read
    began are left alone: Kapacitor's answer may predate them.
    """
    managed = routes.managed
    actions: List[Action] = []
    open_by_key: Dict[str, List[Incident]] = {}
    for incident in incidents:
        open_by_key.setdefault(incident.key, []).append(incident)
        if incident.target not in managed or incident.told_at >= state.read_at:
            continue
        current = state.events.get(incident.key)
        if current is not None and current.level != "OK":
            continue
        if busy(incident.target, incident.key):
            continue
        why = "OK in Kapacitor" if current is not None else "gone from Kapacitor"
        actions.append(
            Action("resolve", incident.target, incident.key, "OK", why, resolve_body(incident, current, why, now))
        )
    for key in sorted(state.events):
        current = state.events[key]
        if current.level == "OK":
            continue
        told = {i.target: i for i in open_by_key.get(key, ())}
        routed: Optional[str] = routes.target_for(current.topics)
        if routed is None:
            routed = next(iter(sorted(told)), None) or routes.default_target
        if routed is None:
            continue
        for target in routes.members(routed):
            if target not in managed:
                continue
            last = told.get(target)
            if last is not None and (last.level == current.level or last.told_at >= state.read_at):
                continue
            if busy(target, key):
                continue
            why = "never told" if last is None else f"told {last.level}"
            actions.append(Action("trigger", target, key, current.level, why, trigger_body(current, last)))
    return actions


def _data_of(body: Optional[bytes]) -> Dict[str, Any]:
    """The ``data`` (series name, tags) of the last delivered event, so labels match."""
    if not body:
        return {}
    try:
        obj = json.loads(body)
    except ValueError:
        return {}
    data = obj.get("data") if isinstance(obj, dict) else None
    return data if isinstance(data, dict) and data else {}


def trigger_body(current: KapacitorEvent, incident: Optional[Incident]) -> bytes:
    """A Kapacitor alert body for the state Kapacitor holds (``data`` from the last delivery)."""
    body: Dict[str, Any] = {
        "id": current.id,
        "message": current.message or f"{current.id} is {current.level}",
        "details": current.details,
        "time": current.time,
        "duration": current.duration_ns,
        "level": current.level,
        "previousLevel": incident.level if incident is not None else "OK",
        "recoverable": True,
    }
    data = _data_of(incident.body if incident is not None else None)
    if data:
        body["data"] = data
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def resolve_body(incident: Incident, current: Optional[KapacitorEvent], why: str, now: float) -> bytes:
    """An OK for the incident: Kapacitor's own OK when it has one, else one stamped ``now``."""
    try:
        last = json.loads(incident.body)
    except ValueError:
        last = {}
    if not isinstance(last, dict):
        last = {}
    when = current.time if current is not None else format_time(datetime.fromtimestamp(now, tz=timezone.utc))
    try:
        parse_time(when)
    except ValueError:
        when = format_time(datetime.fromtimestamp(now, tz=timezone.utc))
    message = current.message if current is not None and current.message else ""
    body = {
        "id": incident.key,
        "message": message or f"{incident.key} is OK ({why}; resolved by kapacitor-oncall-bridge reconcile)",
        "details": current.details if current is not None else "",
        "time": when,
        "duration": current.duration_ns if current is not None else 0,
        "level": "OK",
        "previousLevel": incident.level,
        "recoverable": True,
    }
    data = _data_of(incident.body)
    if data:
        body["data"] = data
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class Reconciler:
    """Reads Kapacitor, plans, enqueues; on a timer inside ``serve`` or once from the CLI."""

    def __init__(
        self,
        config: KapacitorConfig,
        ledger: Store,
        *,
        routes: Routes,
        targets: Iterable[str],
        client: Optional[KapacitorClient] = None,
        metrics: Any = None,
        clock: Callable[[], float] = time.time,
        on_enqueue: Optional[Callable[[], None]] = None,
        allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        #: With replicas, only the holder of the ``reconcile`` singleton reconciles.
        self._allowed = allowed
        self.routes = routes
        self.ledger = ledger
        self.targets = set(targets)
        self.client = client or KapacitorClient(
            config.url or "", token=config.token, ca_file=config.ca_file, timeout=config.timeout, clock=clock
        )
        self.metrics = metrics
        self._clock = clock
        self._on_enqueue = on_enqueue
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def check(self) -> Optional[List[Action]]:
        """The differences now, or None when Kapacitor could not be read (logged, counted)."""
        try:
            state = self.client.read()
        except KapacitorUnavailable as exc:
            log.error("reconcile.kapacitor_unreachable", error=str(exc), action="none")
            if self.metrics is not None:
                self.metrics.reconcile_errors.inc()
            return None
        incidents = self.ledger.incidents()
        actions = plan(state, incidents, self.routes, lambda t, k: not self.ledger.idle(t, k), self._clock())
        return [a for a in actions if a.target in self.targets]

    def run_once(self, dry_run: bool = False) -> Optional[List[Action]]:
        """Check, then (unless ``dry_run``) enqueue every action; None if Kapacitor was unreadable."""
        actions = self.check()
        if actions is None or dry_run:
            return actions
        for action in actions:
            if not self.ledger.idle(action.target, action.key):
                continue  # an event arrived meanwhile: it carries the truth
            self.ledger.enqueue(action.target, action.key, action.level, action.body, synthetic=True).result(30)
            log.warning(
                "reconcile.action",
                action=action.kind,
                target=action.target,
                id=action.key,
                alert_level=action.level,
                reason=action.reason,
            )
            if self.metrics is not None:
                self.metrics.reconcile_actions.labels(action.target, action.kind).inc()
        if actions and self._on_enqueue is not None:
            self._on_enqueue()
        log.info("reconcile.done", actions=len(actions))
        return actions

    def start(self) -> None:
        """Run at once, then every ``reconcile_interval``, in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._allowed():
                    self.run_once()
            except Exception:  # noqa: BLE001 - a failed round must not end reconciling
                log.error("reconcile.crashed", exc_info=True)
            self._stopping.wait(self.config.reconcile_interval)


def routes_of(config: KapacitorConfig, fanout: Optional[Mapping[str, Tuple[str, ...]]] = None) -> Routes:
    """The routes of ``[kapacitor]`` in the order written (TOML tables keep it)."""
    rules = tuple((str(k), str(v)) for k, v in (config.routes or {}).items())
    return Routes(rules, config.default_target, dict(fanout or {}))


def reconcile_file(
    config: KapacitorConfig,
    routes: Routes,
    store_path: str,
    targets: Iterable[str],
    *,
    dry_run: bool = False,
    client: Optional[KapacitorClient] = None,
    now: Optional[float] = None,
) -> Optional[List[Action]]:
    """The CLI's reconcile: plan from the store file, and unless ``dry_run`` queue the actions.

    Works whether or not ``serve`` runs: rows are inserted as ``pending`` in one
    transaction, which a running bridge picks up like a ``replay``; a key with a
    pending or in-flight row is left alone. None when Kapacitor could not be read.
    """
    from .ledger import open_incidents
    from .store import open_store

    own = client is None
    client = client or KapacitorClient(config.url or "", token=config.token, ca_file=config.ca_file, timeout=config.timeout)
    try:
        state = client.read()
    except KapacitorUnavailable as exc:
        log.error("reconcile.kapacitor_unreachable", error=str(exc), action="none")
        return None
    finally:
        if own:
            client.close()
    stamp = time.time() if now is None else now
    if dry_run and not os.path.exists(store_path):
        # The bridge never ran: it has told the platforms nothing.
        return [a for a in plan(state, [], routes, lambda t, k: False, stamp) if a.target in set(targets)]
    conn = open_store(store_path, create=True)
    try:
        # Like Outbox.idle: a key with a queued, in-flight or silenced row is left alone.
        busy = {
            (t, k)
            for t, k in conn.execute(
                "SELECT DISTINCT target, key FROM outbox WHERE state IN ('pending', 'inflight', 'silenced')"
            )
        }
        wanted = set(targets)
        actions = [a for a in plan(state, open_incidents(conn), routes, lambda t, k: (t, k) in busy, stamp)
                   if a.target in wanted]
        if dry_run or not actions:
            return actions
        conn.execute("BEGIN IMMEDIATE")
        try:
            for a in actions:
                conn.execute(
                    "INSERT INTO outbox (target, key, level, body, received_at, queued_at, state, next_attempt_at,"
                    " synthetic) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, 1)",
                    (a.target, a.key, a.level, a.body, stamp, stamp, stamp),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for a in actions:
            log.warning("reconcile.action", action=a.kind, target=a.target, id=a.key, alert_level=a.level, reason=a.reason)
        return actions
    finally:
        conn.close()
