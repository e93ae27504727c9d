"""Splunk On-Call REST endpoint formatter, checked against the strict receiver."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from bridge.errors import ConfigError
from bridge.targets.base import TRUNCATED
from tests.receivers import SplunkOnCallReceiver, validate_splunk_oncall
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, build, event, problems, recovery, send

API_KEY = "5b7d1e0c-0000-4000-8000-abcdefabcdef"
URL = f"https://alert.victorops.com/integrations/generic/20131114/alert/{API_KEY}/team-ops"


def target(**extra):
    return build("splunk-oncall", {"url": URL, **extra})


def body(request):
    return json.loads(request.body)


class TestRender:
    def test_critical(self):
        """CRITICAL keeps its name as message_type, entity_id is the id, times in epoch seconds."""
        sent = body(target().render(event(duration_s=120)))
        assert sent["message_type"] == "CRITICAL"
        assert sent["entity_id"] == "disk_used:host=db-7"
        assert sent["entity_display_name"] == "Disk almost full on db-7"
        assert sent["timestamp"] == 1748852100
        assert sent["state_start_time"] == 1748852100 - 120
        assert validate_splunk_oncall(sent) == []

    def test_recovery(self):
        """OK is sent as RECOVERY (``OK`` is refused by the endpoint)."""
        sent = body(target().render(recovery()))
        assert sent["message_type"] == "RECOVERY"
        assert sent["entity_id"] == "disk_used:host=db-7"

    def test_levels_override(self):
        """WARNING can be made to page as CRITICAL."""
        assert body(target(levels={"WARNING": "CRITICAL"}).render(event(level="WARNING")))["message_type"] == "CRITICAL"

    def test_pre_epoch_time(self):
        """Times before 1970 never become negative epoch seconds."""
        from datetime import datetime, timezone

        sent = body(target().render(event(time=datetime(1960, 1, 1, tzinfo=timezone.utc))))
        assert sent["timestamp"] == 0


class TestLimits:
    def test_state_message_20480(self):
        """Long details are cut at 20480 characters with the marker."""
        message = body(target().render(event(details="z" * 50_000)))["state_message"]
        assert len(message) == 20480 and message.endswith(TRUNCATED)
        assert problems(SplunkOnCallReceiver(api_key=API_KEY), target().render(event(details="z" * 50_000))) == []


class TestConfig:
    def test_unknown_key_rejected(self):
        """A typo is named in the error."""
        with pytest.raises(ConfigError, match=r"target\.t\.routing_key"):
            build("splunk-oncall", {"url": URL, "routing_key": "x"})

    def test_bad_message_type(self):
        """Only CRITICAL, WARNING and INFO can be mapped to."""
        with pytest.raises(ConfigError, match=r"levels\.INFO"):
            target(levels={"INFO": "OK"})

    def test_secret_not_in_repr(self):
        """The key-bearing URL never shows up in reprs."""
        assert API_KEY not in repr(target())


class TestReceiver:
    def test_trigger_then_recover(self):
        """The live receiver opens on CRITICAL and resolves on RECOVERY (200)."""
        with SplunkOnCallReceiver(api_key=API_KEY) as rx:
            t = target(url=rx.url)
            answer = send(t.render(event()))
            assert answer.status_code == 200 and answer.json()["result"] == "success"
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            assert send(t.render(recovery())).status_code == 200
            assert rx.incidents == {"disk_used:host=db-7": "resolved"}

    def test_wrong_key_404(self):
        """A wrong API key in the path is a 404, as Kapacitor's handler expects."""
        with SplunkOnCallReceiver(api_key=API_KEY) as rx:
            wrong = rx.url.replace(API_KEY, "nope")
            assert send(build("splunk-oncall", {"url": wrong}).render(event())).status_code == 404


class TestProperties:
    @FUZZ
    @given(alert_events())
    def test_every_event_is_valid(self, ev):
        """Any parseable event renders to a body the strict receiver accepts."""
        assert problems(SplunkOnCallReceiver(api_key=API_KEY), target().render(ev)) == []
