"""Grafana OnCall Formatted Webhook formatter, checked against the strict OnCall receiver."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from bridge.errors import ConfigError
from tests.receivers import OnCallFormattedWebhookReceiver, validate_oncall_formatted_webhook
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, build, event, problems, recovery, send

TOKEN = "k7Fj2pQx9vLm3nRt5wYz8aBcD"
URL = f"https://oncall.example.net/integrations/v1/formatted_webhook/{TOKEN}/"


def target(**extra):
    return build("grafana-oncall-webhook", {"url": URL, **extra})


def body(request):
    return json.loads(request.body)


class TestRender:
    def test_alerting(self):
        """A non-OK event is ``state: alerting`` grouped by ``alert_uid`` = id."""
        sent = body(target().render(event()))
        assert sent["alert_uid"] == "disk_used:host=db-7"
        assert sent["state"] == "alerting"
        assert sent["title"] == "Disk almost full on db-7"
        assert sent["message"].endswith("used_percent=97.4 (crit > 95)")
        assert "link_to_upstream_details" not in sent
        assert validate_oncall_formatted_webhook(sent) == []

    def test_ok_repeats_title(self):
        """The resolve carries ``state: ok`` and a title, so OnCall keeps the group's title."""
        sent = body(target().render(recovery()))
        assert sent["state"] == "ok"
        assert sent["alert_uid"] == "disk_used:host=db-7"
        assert sent["title"]

    def test_link_template(self):
        """``link_template`` fills URL-encoded id and tags into the source link."""
        t = target(link_template="https://chronograf.example.net/alerts?id=$id&host=${tag_host}&rack=${tag_rack}")
        link = body(t.render(event()))["link_to_upstream_details"]
        assert link == "https://chronograf.example.net/alerts?id=disk_used%3Ahost%3Ddb-7&host=db-7&rack="

    def test_image_url(self):
        """A configured image URL is sent as is."""
        assert body(target(image_url="https://img.example.net/a.png").render(event()))["image_url"] == "https://img.example.net/a.png"


class TestConfig:
    def test_unknown_key_rejected(self):
        """A typo is named in the error."""
        with pytest.raises(ConfigError, match=r"target\.t\.link"):
            target(link="x")

    def test_unknown_template_variable(self):
        """An unknown ``$variable`` fails at config time."""
        with pytest.raises(ConfigError, match=r"link_template.*\$hostname"):
            target(link_template="https://x/$hostname")

    def test_bad_image_url(self):
        """The image URL must be http(s)."""
        with pytest.raises(ConfigError, match=r"image_url"):
            target(image_url="ftp://x/y.png")

    def test_secret_not_in_repr(self):
        """The token-bearing URL never shows up in reprs."""
        assert TOKEN not in repr(target())

    def test_rate_limit(self):
        """OnCall's 300 per 5 minutes per integration is the default."""
        limit = type(target()).default_rate_limit
        assert (limit.count, limit.seconds) == (300, 300.0)


class TestReceiver:
    def test_alerting_then_ok(self):
        """The live receiver answers ``"Ok."`` and groups then resolves by alert_uid."""
        with OnCallFormattedWebhookReceiver(token=TOKEN) as rx:
            t = target(url=rx.url)
            answer = send(t.render(event()))
            assert answer.status_code == 200 and answer.json() == "Ok."
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            send(t.render(recovery()))
            assert rx.incidents == {"disk_used:host=db-7": "resolved"}

    def test_missing_slash_and_wrong_token(self):
        """OnCall 404s without the trailing slash and 403s an unknown token."""
        with OnCallFormattedWebhookReceiver(token=TOKEN) as rx:
            assert send(target(url=rx.url.rstrip("/")).render(event())).status_code == 404
            assert send(target(url=rx.url.replace(TOKEN, "x" * 25)).render(event())).status_code == 403

    def test_heartbeat(self):
        """The integration's heartbeat URL answers GET with ``":)"``."""
        import requests

        with OnCallFormattedWebhookReceiver(token=TOKEN) as rx, requests.Session() as s:
            answer = s.get(rx.heartbeat_url, timeout=5)
            assert answer.status_code == 200 and answer.json() == ":)"
            assert rx.heartbeats == 1


class TestProperties:
    @FUZZ
    @given(alert_events())
    def test_every_event_is_valid(self, ev):
        """Any parseable event renders to a body the strict receiver accepts."""
        t = target(link_template="https://x.example/$series/${tag_host}?t=$time", image_url="https://i.example/a.png")
        assert problems(OnCallFormattedWebhookReceiver(token=TOKEN), t.render(ev)) == []
