"""Alertmanager API v2 formatter, checked against the strict Alertmanager receiver."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Tuple

import pytest
from hypothesis import given

from bridge.config import from_mapping
from bridge.errors import ConfigError
from bridge.targets.alertmanager import label_name
from tests.receivers import AlertmanagerReceiver, validate_alertmanager_alerts
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, T0, build, event, problems, recovery, send

URL = "http://alertmanager.example.net:9093"


def target(**extra):
    return build("alertmanager", {"url": URL, **extra})


def alerts(request):
    return json.loads(request.body)


@dataclass(frozen=True)
class Told:
    """What the ledger hands ``render_told`` (the shape of ``bridge.ledger.Incident``)."""

    level: str
    fired_levels: Tuple[str, ...]
    body: bytes


NOW = T0.timestamp() + 30


def told(*levels, ev=None):
    last = ev or event(level=levels[-1])
    return Told(levels[-1], tuple(levels), last.to_json())


def at(seconds):
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TestRender:
    def test_firing(self):
        """A trigger posts one alert: alertname, group tags of the id, kapacitor_id, severity."""
        request = target().render_told(event(duration_s=60), None, now=NOW)
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
        assert validate_alertmanager_alerts([alert]) == []

    def test_firing_ends_four_intervals_ahead(self):
        """A firing alert carries endsAt = now + 4 × resend_interval, so a bridge restart does not let it lapse."""
        [alert] = alerts(target(resend_interval="30s").render_told(event(), None, now=NOW))
        assert alert["endsAt"] == at(NOW + 120)
        [alert] = alerts(target().render_told(event(), None, now=NOW))
        assert alert["endsAt"] == at(NOW + 240)

    def test_future_start_clamped_to_now(self):
        """An event time in the future does not produce startsAt after endsAt (Alertmanager's 400)."""
        future = event(time=T0 + timedelta(hours=3))
        [fired] = alerts(target().render_told(future, None, now=NOW))
        assert fired["startsAt"] == at(NOW)
        for ev in (future, event(level="OK", time=T0 + timedelta(hours=3))):
            for a in alerts(target().render_told(ev, told("WARNING", ev=future), now=NOW)):
                assert a["startsAt"] == at(NOW)
                assert a["startsAt"] <= a["endsAt"]
                assert validate_alertmanager_alerts([a]) == []

    def test_url_with_path_kept(self):
        """A URL that already ends in /api/v2/alerts is used as is."""
        assert target(url=URL + "/api/v2/alerts/").render(event()).url == URL + "/api/v2/alerts"

    def test_resolve_only_fired_severities(self):
        """An OK resolves exactly the severities the ledger says fired, endsAt = now."""
        posted = alerts(target().render_told(recovery(), told("WARNING", "CRITICAL"), now=NOW))
        assert sorted(a["labels"]["severity"] for a in posted) == ["critical", "warning"]
        assert {a["endsAt"] for a in posted} == {at(NOW)}
        posted = alerts(target().render_told(recovery(), told("CRITICAL"), now=NOW))
        assert [a["labels"]["severity"] for a in posted] == ["critical"]

    def test_resolve_without_ledger_uses_previous_level(self):
        """Without a ledger entry an OK resolves only the level Kapacitor says it leaves."""
        posted = alerts(target().render_told(recovery(previous="WARNING"), None, now=NOW))
        assert [a["labels"]["severity"] for a in posted] == ["warning"]

    def test_resolve_uses_labels_that_were_sent(self):
        """The OK's labels come from the delivered event, so a different tag set still resolves."""
        fired = event(tags={"host": "db-7", "cpu": "cpu3"})
        ok = recovery(tags={"host": "db-7", "cpu": "cpu-total"})
        first = alerts(target().render_told(fired, None, now=NOW))[0]["labels"]
        [resolved] = alerts(target().render_told(ok, told("CRITICAL", ev=fired), now=NOW))
        assert resolved["labels"] == first

    def test_escalation_resolves_previous(self):
        """WARNING to CRITICAL fires critical and resolves the warning label set."""
        posted = alerts(target().render_told(event(level="CRITICAL", previous="WARNING"), told("WARNING"), now=NOW))
        by_severity = {a["labels"]["severity"]: a for a in posted}
        assert by_severity["critical"]["endsAt"] == at(NOW + 240)
        assert by_severity["warning"]["endsAt"] == at(NOW)

    def test_keepalive_reposts_last_level(self):
        """The keep-alive alert is the told level's label set, firing, endsAt ahead."""
        alert = target().keepalive(told("WARNING", "CRITICAL"), NOW)
        assert alert["labels"]["severity"] == "critical"
        assert alert["endsAt"] == at(NOW + 240)

    def test_labels_stable_per_id(self):
        """Only tags the id encodes are labels: another tag value changes annotations, not identity."""
        a = alerts(target().render_told(event(tags={"host": "db-7", "cpu": "cpu3"}), None, now=NOW))[0]
        b = alerts(target().render_told(event(tags={"host": "db-7", "cpu": "cpu-total"}), None, now=NOW))[0]
        assert a["labels"] == b["labels"]
        assert "cpu" not in a["labels"]
        assert a["annotations"]["cpu"] == "cpu3" and b["annotations"]["cpu"] == "cpu-total"

    def test_opt_in_labels(self):
        """``labels = [...]`` makes named tags labels."""
        [alert] = alerts(target(labels=["region"]).render_told(event(tags={"host": "db-7", "region": "eu"}), None, now=NOW))
        assert alert["labels"]["region"] == "eu"

    def test_group_tags_from_id_without_tags(self):
        """A state read back from Kapacitor (no series) gets the same labels from the id alone."""
        with_tags = alerts(target().render_told(event(), None, now=NOW))[0]["labels"]
        bare = event()
        bare = type(bare)(id=bare.id, level=bare.level, time=bare.time, data={})
        assert alerts(target().render_told(bare, None, now=NOW))[0]["labels"]["host"] == with_tags["host"]

    def test_tag_keys_sanitized(self):
        """Tag keys in the id become valid label names; reserved names get a prefix."""
        tags = {"host-name": "a", "9x": "b", "severity": "c", "é": "d", "empty": ""}
        ident = "disk:" + ",".join(f"{k}={v}" for k, v in tags.items())
        [alert] = alerts(target().render_told(event(ident=ident, tags=tags), None, now=NOW))
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

    def test_urls_for_ha(self):
        """``urls`` lists further HA members after ``url``; the same member twice is refused."""
        t = build("alertmanager", {"url": URL, "urls": ["http://am2.example.net:9093"]})
        assert t.members == (URL + "/api/v2/alerts", "http://am2.example.net:9093/api/v2/alerts")
        with pytest.raises(ConfigError, match=r"target\.t\.urls"):
            build("alertmanager", {"url": URL, "urls": [URL]})

    def test_urls_fan_out_into_member_targets(self):
        """A config with ``urls`` gets one delivery target per member; POSTs to the name reach all."""
        config = from_mapping({"target": [{"name": "am", "type": "alertmanager", "url": URL, "urls": ["http://am2:9093"]}]})
        assert config.fanout == {"am": ("am", "am@2")}
        assert config.targets["am"].target.members == (URL + "/api/v2/alerts",)
        assert config.targets["am@2"].target.members == ("http://am2:9093/api/v2/alerts",)

    def test_resend_interval(self):
        """``resend_interval`` is a duration; at or above 5m it is accepted with a warning."""
        assert target(resend_interval="30s").resend_interval == 30
        assert target().resend_interval == 60 and target().warnings() == []
        assert "resolve_timeout" in target(resend_interval="5m").warnings()[0]
        with pytest.raises(ConfigError, match=r"target\.t\.resend_interval"):
            target(resend_interval="soon")

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
            send(t.render_told(event(level="CRITICAL", previous="WARNING"), told("WARNING")))
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            send(t.render_told(recovery(), told("WARNING", "CRITICAL")))
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
        """Any parseable event renders to alerts the strict receiver accepts, with or without a ledger."""
        t = target(link_template="https://x.example/$id?h=${tag_host}")
        assert problems(AlertmanagerReceiver(), t.render(ev)) == []
        body = json.dumps({"id": ev.id, "level": "CRITICAL", "time": "2025-06-02T08:15:00Z", "details": ev.details})
        fired = Told("CRITICAL", ("WARNING", "CRITICAL"), body.encode())
        assert problems(AlertmanagerReceiver(), t.render_told(ev, fired, now=NOW)) == []


class TestCheckConfig:
    def test_warns_when_resend_not_below_resolve_timeout(self, tmp_path, capsys):
        """check-config accepts resend_interval = "5m" but warns that alerts may lapse."""
        from bridge.cli import main

        path = tmp_path / "bridge.toml"
        path.write_text(f'[[target]]\nname = "am"\ntype = "alertmanager"\nurl = "{URL}"\nresend_interval = "5m"\n')
        assert main(["check-config", "--config", str(path)]) == 0
        assert "warning: target.am: resend_interval = 300s" in capsys.readouterr().err
        path.write_text(f'[[target]]\nname = "am"\ntype = "alertmanager"\nurl = "{URL}"\nresend_interval = "1m"\n')
        assert main(["check-config", "--config", str(path)]) == 0
        assert "resend_interval" not in capsys.readouterr().err
