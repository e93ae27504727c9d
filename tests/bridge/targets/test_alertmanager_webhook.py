"""Alertmanager webhook (v4) formatter, checked against OnCall's Alertmanager integration."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from bridge.errors import ConfigError
from tests.receivers import OnCallAlertmanagerReceiver, validate_alertmanager_webhook
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, build, event, problems, recovery, send

URL = "https://oncall.example.net/integrations/v1/alertmanager/k7Fj2pQx9vLm3nRt5wYz8aBcD/"


def target(**extra):
    return build("alertmanager-webhook", {"url": URL, **extra})


def body(request):
    return json.loads(request.body)


class TestRender:
    def test_firing(self):
        """A trigger is a firing v4 message with one alert and Go's zero endsAt."""
        sent = body(target().render(event()))
        assert sent["version"] == "4"
        assert sent["status"] == "firing"
        assert sent["groupKey"] == "disk_used:host=db-7"
        assert sent["groupLabels"] == {"alertname": "disk", "kapacitor_id": "disk_used:host=db-7"}
        [alert] = sent["alerts"]
        assert alert["status"] == "firing"
        assert alert["endsAt"] == "0001-01-01T00:00:00Z"
        assert alert["labels"]["severity"] == "critical"
        assert {"summary", "description"} <= set(alert["annotations"])
        assert validate_alertmanager_webhook(sent) == []

    def test_resolved(self):
        """OK is resolved at both levels, endsAt = recovery time, severity of the level it leaves."""
        sent = body(target().render(recovery(previous="WARNING")))
        assert sent["status"] == "resolved"
        [alert] = sent["alerts"]
        assert alert["status"] == "resolved"
        assert alert["endsAt"] == "2025-06-02T08:41:00Z"
        assert alert["labels"]["severity"] == "warning"

    def test_group_key_and_fingerprint_stable(self):
        """groupKey and fingerprint are the same for every event of one id."""
        sent = [body(target().render(e)) for e in (event(level="WARNING"), event(), recovery())]
        assert {s["groupKey"] for s in sent} == {"disk_used:host=db-7"}
        assert len({s["alerts"][0]["fingerprint"] for s in sent}) == 1
        other = body(target().render(event(ident="other")))
        assert other["alerts"][0]["fingerprint"] != sent[0]["alerts"][0]["fingerprint"]

    def test_receiver_and_external_url(self):
        """``receiver`` and ``external_url`` are configurable."""
        sent = body(target(receiver="kap", external_url="https://bridge.example.net").render(event()))
        assert (sent["receiver"], sent["externalURL"]) == ("kap", "https://bridge.example.net")


class TestConfig:
    def test_unknown_key_rejected(self):
        """A typo is named in the error."""
        with pytest.raises(ConfigError, match=r"target\.t\.group_key"):
            target(group_key="x")

    def test_secret_not_in_repr(self):
        """The token-bearing URL never shows up in reprs."""
        assert "k7Fj2pQx9vLm3nRt5wYz8aBcD" not in repr(target())


class TestReceiver:
    def test_firing_then_resolved(self):
        """OnCall's Alertmanager integration groups by groupKey and resolves on status resolved."""
        with OnCallAlertmanagerReceiver() as rx:
            t = target(url=rx.url)
            assert send(t.render(event())).json() == "Ok."
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            send(t.render(recovery()))
            assert rx.incidents == {"disk_used:host=db-7": "resolved"}


class TestProperties:
    @FUZZ
    @given(alert_events())
    def test_every_event_is_valid(self, ev):
        """Any parseable event renders to a v4 message the strict receiver accepts."""
        t = target(link_template="https://x.example/$id")
        rx = OnCallAlertmanagerReceiver(token="k7Fj2pQx9vLm3nRt5wYz8aBcD")
        assert problems(rx, t.render(ev)) == []
