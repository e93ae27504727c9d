"""Alertmanager webhook (v4) formatter, checked against OnCall's Alertmanager integration."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Tuple

import pytest
from hypothesis import given

from bridge.config import bind_bridge_url, from_mapping
from bridge.errors import ConfigError
from bridge.targets.alertmanager_webhook import fingerprint, group_key
from tests.receivers import OnCallAlertmanagerReceiver, validate_alertmanager_webhook
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, T0, build, event, problems, recovery, send

GK = '{}:{alertname="disk", kapacitor_id="disk_used:host=db-7"}'
URL = "https://oncall.example.net/integrations/v1/alertmanager/k7Fj2pQx9vLm3nRt5wYz8aBcD/"


@dataclass(frozen=True)
class Told:
    level: str
    fired_levels: Tuple[str, ...]
    body: bytes


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
        assert sent["groupKey"] == GK
        assert sent["notification_reason"] == "first notification"
        assert sent["routeLabels"] == {}
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
        assert {s["groupKey"] for s in sent} == {GK}
        critical = [s["alerts"][0]["fingerprint"] for s in sent[1:]]
        assert len(set(critical)) == 1
        other = body(target().render(event(ident="other")))
        assert other["alerts"][0]["fingerprint"] != sent[0]["alerts"][0]["fingerprint"]

    def test_receiver_and_external_url(self):
        """``receiver`` and ``external_url`` are configurable."""
        sent = body(target(receiver="kap", external_url="https://bridge.example.net").render(event()))
        assert (sent["receiver"], sent["externalURL"]) == ("kap", "https://bridge.example.net")


    def test_key_order_matches_alertmanager(self):
        """Keys in the order Alertmanager's notify/webhook.Message encodes them."""
        assert list(body(target().render(event()))) == [
            "receiver", "status", "alerts", "notification_reason", "groupLabels", "commonLabels",
            "commonAnnotations", "routeLabels", "externalURL", "version", "groupKey", "truncatedAlerts",
        ]

    def test_fingerprint_is_alertmanagers(self):
        """fingerprint is FNV-1a of the sorted label pairs (values checked against prometheus/common)."""
        assert fingerprint({}) == "cbf29ce484222325"
        # Captured from a real Alertmanager 0.35.0 webhook body (tests/alertmanager fixture).
        real = {"alertname": "cpu", "kapacitor_id": "cpu:host=a", "severity": "critical"}
        assert fingerprint(real) == "64ef33a99f76bdc4"
        assert fingerprint({"alertname": "cpu"}) != fingerprint({"alertname": "cpv"})
        assert fingerprint({"a": "b", "c": "d"}) == fingerprint({"c": "d", "a": "b"})

    def test_group_key_quotes_like_go(self):
        """groupKey values are quoted as Go's strconv.Quote does."""
        assert group_key({"b": 'x"y', "a": "é\n"}) == r'{}:{a="é\n", b="x\"y"}'

    def test_resolve_only_fired(self):
        """With the ledger an OK lists exactly the severities that fired, all resolved."""
        fired = Told("CRITICAL", ("WARNING", "CRITICAL"), event().to_json())
        sent = json.loads(target().render_told(recovery(), fired, now=T0.timestamp() + 1800).body)
        assert sent["status"] == "resolved" and sent["notification_reason"] == "all alerts resolved"
        assert sorted(a["labels"]["severity"] for a in sent["alerts"]) == ["critical", "warning"]
        assert sent["commonLabels"]["kapacitor_id"] == "disk_used:host=db-7"
        assert "severity" not in sent["commonLabels"]

    def test_escalation_lists_previous_resolved(self):
        """WARNING -> CRITICAL: critical firing, warning resolved, reason new alerts added."""
        fired = Told("WARNING", ("WARNING",), event(level="WARNING").to_json())
        sent = json.loads(target().render_told(event(previous="WARNING"), fired, now=T0.timestamp() + 60).body)
        assert sent["status"] == "firing" and sent["notification_reason"] == "new alerts added"
        assert {a["labels"]["severity"]: a["status"] for a in sent["alerts"]} == {"critical": "firing", "warning": "resolved"}

    def test_external_url_defaults_to_bridge(self):
        """As serve and send-test bind it, externalURL is the bridge's own URL unless set."""
        config = bind_bridge_url(from_mapping({"server": {"listen": "127.0.0.1:9095"},
                                               "target": [{"name": "oc", "type": "alertmanager-webhook", "url": URL}]}))
        assert body(config.targets["oc"].target.render(event()))["externalURL"] == "http://127.0.0.1:9095"


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
