"""The reconcile diff: Kapacitor's state + the ledger in, resolves and triggers out (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import pytest

from bridge.errors import ConfigError
from bridge.event import parse
from bridge.kapacitor_api import KapacitorEvent, KapacitorState, go_duration_ns, merge
from bridge.config import from_mapping
from bridge.reconcile import Routes, plan, routes_of

READ_AT = 1_000_000.0
ROUTES = Routes((("main:cpu:alert2", "am"), ("main:disk_*", "oncall")), default_target="am")


@dataclass(frozen=True)
class Incident:
    target: str
    key: str
    level: str
    body: bytes = b"{}"
    told_at: float = READ_AT - 60
    fired_levels: Tuple[str, ...] = ()


def kev(ident: str, level: str, *topics: str, when: str = "2026-01-01T00:00:00Z") -> KapacitorEvent:
    return KapacitorEvent(ident, level, f"{ident} is {level}", "", when, 0, topics or ("main:cpu:alert2",))


def state(*events: KapacitorEvent) -> KapacitorState:
    return KapacitorState(merge(list(events)), tuple(sorted({t for e in events for t in e.topics})), READ_AT)


def never_busy(target: str, key: str) -> bool:
    return False


def lines(actions) -> list:
    return [a.line() for a in actions]


class TestPlan:
    def test_in_sync(self):
        """Open incident at Kapacitor's level, OK ids without incidents: nothing to do."""
        s = state(kev("cpu:host=a", "CRITICAL"), kev("cpu:host=b", "OK"))
        assert plan(s, [Incident("am", "cpu:host=a", "CRITICAL")], ROUTES, never_busy, READ_AT) == []

    def test_resolve_when_ok_in_kapacitor(self):
        """An incident whose id is OK in Kapacitor gets a resolve, with Kapacitor's OK time."""
        s = state(kev("cpu:host=a", "OK", when="2026-01-01T00:05:00Z"))
        [action] = plan(s, [Incident("am", "cpu:host=a", "CRITICAL")], ROUTES, never_busy, READ_AT)
        assert action.line() == "resolve am cpu:host=a"
        event = parse(action.body)
        assert event.level == "OK" and event.previous_level == "CRITICAL"
        assert event.time.isoformat().startswith("2026-01-01T00:05:00")

    def test_resolve_when_gone(self):
        """An incident whose id Kapacitor no longer lists (task deleted) gets a resolve."""
        [action] = plan(state(), [Incident("am", "cpu:host=a", "WARNING")], ROUTES, never_busy, READ_AT)
        assert (action.line(), action.reason) == ("resolve am cpu:host=a", "gone from Kapacitor")

    def test_resolve_keeps_series_data(self):
        """The resolve repeats the delivered event's data, so platforms match it to the trigger."""
        body = json.dumps({"id": "cpu:host=a", "level": "CRITICAL", "data": {"series": [{"name": "cpu", "tags": {"host": "a"}}]}})
        [action] = plan(state(), [Incident("am", "cpu:host=a", "CRITICAL", body.encode())], ROUTES, never_busy, READ_AT)
        assert parse(action.body).tags == {"host": "a"}

    def test_trigger_missing(self):
        """A non-OK id the platform was never told about gets a trigger on its routed target."""
        s = state(kev("disk:host=a", "WARNING", "main:disk_usage:alert2"), kev("cpu:host=a", "CRITICAL"))
        assert lines(plan(s, [], ROUTES, never_busy, READ_AT)) == [
            "trigger am cpu:host=a CRITICAL",
            "trigger oncall disk:host=a WARNING",
        ]

    def test_trigger_level_change(self):
        """Told WARNING while Kapacitor says CRITICAL: a trigger at CRITICAL."""
        s = state(kev("cpu:host=a", "CRITICAL"))
        [action] = plan(s, [Incident("am", "cpu:host=a", "WARNING")], ROUTES, never_busy, READ_AT)
        assert action.line() == "trigger am cpu:host=a CRITICAL"
        assert parse(action.body).previous_level == "WARNING"

    def test_default_target_for_unrouted(self):
        """No route matches: default_target; without one, nothing."""
        s = state(kev("mem:host=a", "CRITICAL", "main:mem:alert2"))
        assert lines(plan(s, [], ROUTES, never_busy, READ_AT)) == ["trigger am mem:host=a CRITICAL"]
        assert plan(s, [], Routes(ROUTES.rules, None), never_busy, READ_AT) == []

    def test_id_in_two_topics_is_one_id(self):
        """An id listed under its node's topic and a named topic yields one action."""
        s = state(kev("cpu:host=a", "CRITICAL", "main:cpu:alert2"), kev("cpu:host=a", "CRITICAL", "cpu"))
        assert lines(plan(s, [], ROUTES, never_busy, READ_AT)) == ["trigger am cpu:host=a CRITICAL"]
        assert s.events["cpu:host=a"].topics == ("cpu", "main:cpu:alert2")

    def test_busy_keys_untouched(self):
        """A key with a pending or in-flight row is left to the queue."""
        s = state(kev("cpu:host=a", "OK"), kev("cpu:host=b", "CRITICAL"))
        busy = {("am", "cpu:host=a"), ("am", "cpu:host=b")}
        assert plan(s, [Incident("am", "cpu:host=a", "CRITICAL")], ROUTES, lambda t, k: (t, k) in busy, READ_AT) == []

    def test_incident_newer_than_read_untouched(self):
        """An incident told after Kapacitor was read is not resolved on older information."""
        fresh = Incident("am", "cpu:host=a", "CRITICAL", told_at=READ_AT + 1)
        assert plan(state(), [fresh], ROUTES, never_busy, READ_AT) == []

    def test_unmanaged_target_untouched(self):
        """Only targets named by routes/default_target are reconciled."""
        assert plan(state(), [Incident("pagerduty", "cpu:host=a", "CRITICAL")], ROUTES, never_busy, READ_AT) == []

    def test_exact_route_before_glob(self):
        """An exact topic name wins over a glob written earlier."""
        routes = Routes((("main:*", "oncall"), ("main:cpu:alert2", "am")))
        assert routes.target_for(["main:cpu:alert2"]) == "am"
        assert routes.target_for(["main:disk:alert2"]) == "oncall"
        assert routes.target_for(["cpu"]) is None


class TestKapacitorShapes:
    def test_go_durations(self):
        """Kapacitor's durations are Go duration strings."""
        assert go_duration_ns("0s") == 0
        assert go_duration_ns("1m30.5s") == 90_500_000_000
        assert go_duration_ns("2h0m0s") == 7_200 * 10**9
        assert go_duration_ns("150ms") == 150_000_000
        assert go_duration_ns(42) == 42
        with pytest.raises(ValueError):
            go_duration_ns("soon")

    def test_merge_latest_wins(self):
        """Two topics disagreeing: the later state wins."""
        merged = merge([kev("x", "CRITICAL", "a", when="2026-01-01T00:00:00Z"), kev("x", "OK", "b", when="2026-01-01T00:01:00Z")])
        assert merged["x"].level == "OK" and merged["x"].topics == ("a", "b")


class TestConfig:
    def test_parse(self):
        """[kapacitor] keys, defaults, and routes naming configured targets (HA members included)."""
        am = {"name": "am", "type": "alertmanager", "url": "http://a:9093", "urls": ["http://b:9093"]}
        cfg = from_mapping({"kapacitor": {"url": "http://127.0.0.1:9092", "routes": {"main:*": "am"}}, "target": [am]})
        assert cfg.kapacitor.reconcile_interval == 300
        routes = routes_of(cfg.kapacitor, cfg.fanout)
        assert routes.rules == (("main:*", "am"),)
        assert routes.managed == {"am", "am@2"}
        with pytest.raises(ConfigError, match=r"kapacitor\.routes\.main:\*"):
            from_mapping({"kapacitor": {"url": "http://k:9092", "routes": {"main:*": "nope"}}, "target": [am]})
        with pytest.raises(ConfigError, match=r"kapacitor\.url"):
            from_mapping({"kapacitor": {"default_target": "am"}, "target": [am]})
        with pytest.raises(ConfigError, match=r"kapacitor\.reconcile_intervall"):
            from_mapping({"kapacitor": {"url": "http://k:9092", "reconcile_intervall": "1m"}})
        assert from_mapping({}).kapacitor.url is None

    def test_ha_members_each_triggered(self):
        """A route to an HA target triggers on every member without an incident."""
        routes = Routes((("main:cpu:alert2", "am"),), None, {"am": ("am", "am@2")})
        s = state(kev("cpu:host=a", "CRITICAL"))
        assert lines(plan(s, [Incident("am", "cpu:host=a", "CRITICAL")], routes, never_busy, READ_AT)) == [
            "trigger am@2 cpu:host=a CRITICAL"
        ]
