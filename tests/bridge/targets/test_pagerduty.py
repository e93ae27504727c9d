"""PagerDuty Events API v2 formatter, checked against the strict PagerDuty receiver."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from bridge.errors import ConfigError
from bridge.targets.base import TRUNCATED
from tests.receivers import PagerDutyReceiver, validate_pagerduty
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, build, event, problems, recovery, send

KEY = "0123456789abcdef0123456789abcdef"


def target(**extra):
    return build("pagerduty", {"routing_key": KEY, **extra})


def body(request):
    return json.loads(request.body)


class TestRender:
    def test_trigger_fields(self):
        """A CRITICAL event becomes a trigger with summary, source, severity and timestamp."""
        sent = body(target().render(event()))
        assert sent["event_action"] == "trigger"
        assert sent["routing_key"] == KEY
        assert sent["dedup_key"] == "disk_used:host=db-7"
        payload = sent["payload"]
        assert payload["summary"] == "Disk almost full on db-7"
        assert payload["source"] == "db-7"
        assert payload["severity"] == "critical"
        assert payload["timestamp"] == "2025-06-02T08:15:00Z"
        assert payload["custom_details"]["fields"] == {"used_percent": 97.4}
        assert validate_pagerduty(sent) == []

    def test_resolve(self):
        """OK becomes a resolve carrying only routing key, action and dedup key."""
        sent = body(target().render(recovery()))
        assert sent == {"routing_key": KEY, "event_action": "resolve", "dedup_key": "disk_used:host=db-7"}

    def test_default_url_and_headers(self):
        """The public endpoint and JSON content type are the defaults."""
        request = target().render(event())
        assert request.url == "https://events.pagerduty.com/v2/enqueue"
        assert request.headers["Content-Type"] == "application/json"

    @pytest.mark.parametrize("level,severity", [("CRITICAL", "critical"), ("WARNING", "warning"), ("INFO", "info")])
    def test_default_levels(self, level, severity):
        """Levels map onto PagerDuty severities by default."""
        assert body(target().render(event(level=level)))["payload"]["severity"] == severity

    def test_levels_override(self):
        """``levels`` replaces single entries and keeps the other defaults."""
        t = target(levels={"WARNING": "error"})
        assert body(t.render(event(level="WARNING")))["payload"]["severity"] == "error"
        assert body(t.render(event(level="INFO")))["payload"]["severity"] == "info"

    def test_source_falls_back_to_series(self):
        """Without a host tag the series name is the source."""
        assert body(target().render(event(tags={})))["payload"]["source"] == "disk"


class TestLimits:
    def test_long_summary_truncated(self):
        """A 5000-character message is cut to 1024 with a visible marker."""
        summary = body(target().render(event(message="x" * 5000)))["payload"]["summary"]
        assert len(summary) == 1024 and summary.endswith(TRUNCATED)

    def test_huge_details_fit_512k(self):
        """Details that would push the event past 512000 bytes are trimmed, and the receiver accepts it."""
        request = target().render(event(details='"\x00' * 400_000))
        assert len(request.body) <= 512_000
        assert body(request)["payload"]["custom_details"]["details"].endswith(TRUNCATED)
        assert problems(PagerDutyReceiver(routing_key=KEY), request) == []

    def test_huge_tags_dropped_last(self):
        """When tags alone overflow, they are replaced by a note and details still fit."""
        tags = {f"k{i}": "v" * 10_000 for i in range(60)}
        request = target().render(event(tags=tags, details="d" * 1000))
        assert len(request.body) <= 512_000
        details = body(request)["payload"]["custom_details"]
        assert "removed" in details["tags"]
        assert details["details"] == "d" * 1000

    def test_long_id_hashed_dedup_key(self):
        """Ids over 255 characters get a stable, distinct, hash-suffixed dedup key."""
        a, b = "a" * 300 + "1", "a" * 300 + "2"
        key_a = body(target().render(event(ident=a)))["dedup_key"]
        assert len(key_a) == 255
        assert key_a == body(target().render(recovery(ident=a)))["dedup_key"]
        assert key_a != body(target().render(event(ident=b)))["dedup_key"]


class TestDedupKey:
    def test_stable_across_levels_and_times(self):
        """Trigger, escalation and resolve of one id share the dedup key."""
        keys = {
            body(target().render(e))["dedup_key"]
            for e in (event(level="WARNING"), event(level="CRITICAL", previous="WARNING"), recovery())
        }
        assert keys == {"disk_used:host=db-7"}


class TestConfig:
    def test_unknown_key_rejected(self):
        """A typo is named in the error."""
        with pytest.raises(ConfigError, match=r"target\.t\.routng_key"):
            build("pagerduty", {"routing_key": KEY, "routng_key": KEY})

    def test_routing_key_length(self):
        """A REST API key (wrong length) fails at config time, not as 400s later."""
        with pytest.raises(ConfigError, match="32 characters"):
            build("pagerduty", {"routing_key": "u+abcdefghijklmnopqr"})

    def test_bad_level_value(self):
        """A severity PagerDuty does not know is refused, naming the level."""
        with pytest.raises(ConfigError, match=r"levels\.CRITICAL"):
            target(levels={"CRITICAL": "sev1"})

    def test_unknown_level_name(self):
        """Only CRITICAL, WARNING and INFO can be mapped."""
        with pytest.raises(ConfigError, match=r"levels\.OK"):
            target(levels={"OK": "info"})

    def test_bad_url(self):
        """A URL without http(s) scheme is refused."""
        with pytest.raises(ConfigError, match=r"target\.t\.url"):
            target(url="events.pagerduty.com/v2/enqueue")

    def test_secret_not_in_repr(self):
        """The routing key never shows up in reprs (logs, tracebacks)."""
        assert KEY not in repr(target())

    def test_rate_limit(self):
        """The documented ~120 events per minute is the default limit."""
        limit = type(target()).default_rate_limit
        assert (limit.count, limit.seconds) == (120, 60.0)


class TestReceiver:
    def test_trigger_then_resolve(self):
        """The live receiver opens the incident on trigger and resolves it on OK."""
        with PagerDutyReceiver(routing_key=KEY) as rx:
            t = target(url=rx.url)
            answer = send(t.render(event()))
            assert answer.status_code == 202
            assert answer.json() == {"status": "success", "message": "Event processed", "dedup_key": "disk_used:host=db-7"}
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            assert send(t.render(recovery())).status_code == 202
            assert rx.incidents == {"disk_used:host=db-7": "resolved"}

    def test_invalid_event_answer(self):
        """An invalid event gets PagerDuty's 400 body and is recorded as rejected."""
        with PagerDutyReceiver(routing_key=KEY) as rx:
            request = target(url=rx.url).render(event())
            bad = type(request)(request.method, request.url, request.headers, b'{"routing_key":"short","event_action":"trigger"}')
            answer = send(bad)
            assert answer.status_code == 400
            assert answer.json()["status"] == "invalid event"
            assert any("routing_key" in e for e in answer.json()["errors"])
            assert rx.rejected and not rx.requests


class TestProperties:
    @FUZZ
    @given(alert_events())
    def test_every_event_is_valid(self, ev):
        """Any parseable event renders to a request the strict receiver accepts."""
        request = target().render(ev)
        assert problems(PagerDutyReceiver(routing_key=KEY), request) == []
