"""Alertmanager API v2 formatter, checked against the strict Alertmanager receiver."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from bridge.errors import ConfigError
from bridge.targets.alertmanager import label_name
from tests.receivers import AlertmanagerReceiver, validate_alertmanager_alerts
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, build, event, problems, recovery, send

URL = "http://alertmanager.example.net:9093"


def target(**extra):
    return build("alertmanager", {"url": URL, **extra})


def alerts(request):
    return json.loads(request.body)


class TestRender:
    def test_firing(self):
        """A trigger posts one alert: alertname, tags, kapacitor_id, severity; no endsAt."""
        request = target().render(event(duration_s=60))
        assert request.url == URL + "/api/v2/alerts"
        [alert] = alerts(request)
        assert alert["labels"] == {
            "alertname": "disk",
            "host": "db-7",
            "kapacitor_id": "disk_used:host=db-7",
            "severity": "critical",
        }
        assert alert["annotations"]["summary"] == "Disk almost full on db-7"
        assert alert["startsAt"] == "2025-06-02T08:14:00Z"
        assert "endsAt" not in alert
        assert validate_alertmanager_alerts([alert]) == []

    def test_url_with_path_kept(self):
        """A URL that already ends in /api/v2/alerts is used as is."""
        assert target(url=URL + "/api/v2/alerts/").render(event()).url == URL + "/api/v2/alerts"

    def test_resolve_every_severity(self):
        """Recovery re-posts each severity's label set with endsAt = recovery time."""
        posted = alerts(target().render(recovery()))
        assert sorted(a["labels"]["severity"] for a in posted) == ["critical", "info", "warning"]
        assert {a["endsAt"] for a in posted} == {"2025-06-02T08:41:00Z"}
        assert all(a["startsAt"] <= a["endsAt"] for a in posted)

    def test_escalation_resolves_previous(self):
        """WARNING to CRITICAL fires critical and resolves the warning label set."""
        posted = alerts(target().render(event(level="CRITICAL", previous="WARNING")))
        by_severity = {a["labels"]["severity"]: a for a in posted}
        assert "endsAt" not in by_severity["critical"]
        assert by_severity["warning"]["endsAt"] == "2025-06-02T08:15:00Z"

    def test_labels_stable_per_id(self):
        """Trigger and resolve of one id share every label but severity-matched ones."""
        fired = alerts(target().render(event()))[0]["labels"]
        resolved = [a["labels"] for a in alerts(target().render(recovery()))]
        assert fired in resolved

    def test_tag_keys_sanitized(self):
        """Tag keys become valid label names; reserved names get a prefix."""
        [alert] = alerts(target().render(event(tags={"host-name": "a", "9x": "b", "severity": "c", "é": "d", "empty": ""})))
        labels = alert["labels"]
        assert labels["host_name"] == "a"
        assert labels["_9x"] == "b"
        assert labels["tag_severity"] == "c"
        assert labels["_"] == "d"
        assert "empty" not in labels
        assert labels["severity"] == "critical"
        assert label_name("a.b/c") == "a_b_c"

    def test_levels_override(self):
        """The severity label follows ``levels``."""
        [alert] = alerts(target(levels={"CRITICAL": "page"}).render(event()))
        assert alert["labels"]["severity"] == "page"

    def test_generator_url(self):
        """``link_template`` becomes generatorURL."""
        [alert] = alerts(target(link_template="https://chronograf.example.net/$series").render(event()))
        assert alert["generatorURL"] == "https://chronograf.example.net/disk"


class TestConfig:
    def test_unknown_key_rejected(self):
        """A typo is named in the error."""
        with pytest.raises(ConfigError, match=r"target\.t\.severity"):
            target(severity="x")

    def test_url_required(self):
        """Alertmanager is self-hosted: no default URL."""
        with pytest.raises(ConfigError, match=r"target\.t\.url"):
            build("alertmanager", {})


class TestReceiver:
    def test_fire_then_resolve(self):
        """The live receiver tracks the id open, then resolved after the recovery post."""
        with AlertmanagerReceiver() as rx:
            t = target(url=rx.url)
            assert send(t.render(event(level="WARNING"))).status_code == 200
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            send(t.render(event(level="CRITICAL", previous="WARNING")))
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            send(t.render(recovery()))
            assert rx.incidents == {"disk_used:host=db-7": "resolved"}
            assert set(rx.alerts.values()) == {"resolved"}

    def test_invalid_label_400(self):
        """An invalid label name is a 400 with Alertmanager's error text."""
        with AlertmanagerReceiver() as rx:
            request = target(url=rx.url).render(event())
            bad = type(request)("POST", request.url, request.headers, b'[{"labels":{"bad-name":"x"}}]')
            answer = send(bad)
            assert answer.status_code == 400 and "invalid name" in answer.json()


class TestProperties:
    @FUZZ
    @given(alert_events())
    def test_every_event_is_valid(self, ev):
        """Any parseable event renders to alerts the strict receiver accepts."""
        t = target(link_template="https://x.example/$id?h=${tag_host}")
        assert problems(AlertmanagerReceiver(), t.render(ev)) == []
