"""ilert Events API formatter, checked against the strict ilert receiver."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from bridge.errors import ConfigError
from bridge.targets.base import TRUNCATED
from tests.receivers import IlertReceiver, validate_ilert
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, build, event, problems, recovery, send

KEY = "il1api0000example0000000000"


def target(**extra):
    return build("ilert", {"integration_key": KEY, **extra})


def body(request):
    return json.loads(request.body)


class TestRender:
    def test_alert(self):
        """A CRITICAL event is an ALERT with HIGH priority keyed by the id."""
        request = target().render(event())
        assert request.url == "https://api.ilert.com/api/events"
        sent = body(request)
        assert sent["integrationKey"] == KEY
        assert sent["eventType"] == "ALERT"
        assert sent["alertKey"] == "disk_used:host=db-7"
        assert sent["summary"] == "Disk almost full on db-7"
        assert sent["priority"] == "HIGH"
        assert sent["labels"] == {"host": "db-7"}
        assert sent["customDetails"]["fields"] == {"used_percent": 97.4}
        assert validate_ilert(sent) == []

    def test_resolve_repeats_summary(self):
        """RESOLVE carries the summary too: ilert requires it on every event."""
        sent = body(target().render(recovery()))
        assert sent["eventType"] == "RESOLVE"
        assert sent["alertKey"] == "disk_used:host=db-7"
        assert sent["summary"]
        assert validate_ilert(sent) == []

    @pytest.mark.parametrize("level,priority", [("CRITICAL", "HIGH"), ("WARNING", "LOW"), ("INFO", "LOW")])
    def test_default_levels(self, level, priority):
        """CRITICAL pages with HIGH, the rest are LOW."""
        assert body(target().render(event(level=level)))["priority"] == priority

    def test_levels_override(self):
        """WARNING can be made HIGH."""
        assert body(target(levels={"WARNING": "HIGH"}).render(event(level="WARNING")))["priority"] == "HIGH"


class TestLimits:
    def test_huge_details_trimmed(self):
        """Details beyond the body budget are cut with the marker and still valid."""
        request = target().render(event(details="\x01" * 300_000))
        assert len(request.body) <= 256_000
        assert body(request)["details"].endswith(TRUNCATED)
        assert problems(IlertReceiver(integration_key=KEY), request) == []

    def test_long_summary(self):
        """Summaries are capped at 1024 characters, marked."""
        summary = body(target().render(event(message="s" * 3000)))["summary"]
        assert len(summary) == 1024 and summary.endswith(TRUNCATED)

    def test_alert_key_stable_and_hashed(self):
        """Long ids get a stable hash-suffixed key shared by ALERT and RESOLVE."""
        ident = "q" * 1000
        key = body(target().render(event(ident=ident)))["alertKey"]
        assert len(key) == 255
        assert key == body(target().render(recovery(ident=ident)))["alertKey"]


class TestConfig:
    def test_unknown_key_rejected(self):
        """A typo is named in the error."""
        with pytest.raises(ConfigError, match=r"target\.t\.api_key"):
            build("ilert", {"integration_key": KEY, "api_key": KEY})

    def test_bad_priority(self):
        """Only HIGH and LOW are priorities."""
        with pytest.raises(ConfigError, match=r"levels\.CRITICAL"):
            target(levels={"CRITICAL": "URGENT"})

    def test_secret_not_in_repr(self):
        """The integration key never shows up in reprs."""
        assert KEY not in repr(target())

    def test_rate_limit(self):
        """50 requests per minute per integration key."""
        limit = type(target()).default_rate_limit
        assert (limit.count, limit.seconds) == (50, 60.0)


class TestReceiver:
    def test_alert_then_resolve(self):
        """The live receiver opens on ALERT and resolves on RESOLVE (202 both)."""
        with IlertReceiver(integration_key=KEY) as rx:
            t = target(url=rx.url)
            assert send(t.render(event())).status_code == 202
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            assert send(t.render(recovery())).status_code == 202
            assert rx.incidents == {"disk_used:host=db-7": "resolved"}

    def test_unknown_key_404(self):
        """An unknown integration key is refused."""
        with IlertReceiver(integration_key=KEY) as rx:
            answer = send(build("ilert", {"integration_key": "other", "url": rx.url}).render(event()))
            assert answer.status_code == 404
            assert rx.rejected


class TestProperties:
    @FUZZ
    @given(alert_events())
    def test_every_event_is_valid(self, ev):
        """Any parseable event renders to an event the strict receiver accepts."""
        assert problems(IlertReceiver(integration_key=KEY), target().render(ev)) == []
