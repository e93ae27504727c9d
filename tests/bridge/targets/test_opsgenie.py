"""Opsgenie Alert API v2 formatter, checked against the strict Opsgenie receiver."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import given

from bridge.errors import ConfigError
from bridge.targets.base import TRUNCATED
from tests.receivers import OpsgenieReceiver, validate_opsgenie_create
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, build, event, problems, recovery, send

KEY = "eb243592-faa2-4ba2-a551q-1afdf565c889"


def target(**extra):
    return build("opsgenie", {"api_key": KEY, **extra})


def body(request):
    return json.loads(request.body)


class TestRender:
    def test_create(self):
        """A CRITICAL event creates a P1 alert aliased by the Kapacitor id."""
        request = target().render(event())
        assert request.url == "https://api.opsgenie.com/v2/alerts"
        assert request.headers["Authorization"] == f"GenieKey {KEY}"
        sent = body(request)
        assert sent["message"] == "Disk almost full on db-7"
        assert sent["alias"] == "disk_used:host=db-7"
        assert sent["priority"] == "P1"
        assert "host:db-7" in sent["tags"]
        assert sent["details"]["tag.host"] == "db-7"
        assert sent["details"]["field.used_percent"] == "97.4"
        assert validate_opsgenie_create(sent) == []

    def test_close_by_alias(self):
        """OK closes by the URL-encoded alias with identifierType=alias."""
        request = target().render(recovery())
        assert request.method == "POST"
        assert request.url == (
            "https://api.opsgenie.com/v2/alerts/disk_used%3Ahost%3Ddb-7/close?identifierType=alias"
        )
        assert request.headers["Authorization"] == f"GenieKey {KEY}"
        assert body(request)["source"] == "kapacitor-oncall"

    def test_alias_with_slash_stays_one_segment(self):
        """A ``/`` in the id is percent-encoded so the close path keeps its shape."""
        request = target().render(recovery(ident="a/b c"))
        assert "/v2/alerts/a%2Fb%20c/close" in request.url
        assert problems(OpsgenieReceiver(api_key=KEY), request) == []

    def test_eu_url(self):
        """The EU host can be configured."""
        request = target(url="https://api.eu.opsgenie.com/").render(event())
        assert request.url == "https://api.eu.opsgenie.com/v2/alerts"

    @pytest.mark.parametrize("level,priority", [("CRITICAL", "P1"), ("WARNING", "P3"), ("INFO", "P5")])
    def test_default_levels(self, level, priority):
        """Defaults follow Kapacitor's opsgenie2 handler."""
        assert body(target().render(event(level=level)))["priority"] == priority

    def test_levels_override(self):
        """``levels`` overrides one level and keeps the rest."""
        t = target(levels={"WARNING": "P2"})
        assert body(t.render(event(level="WARNING")))["priority"] == "P2"
        assert body(t.render(event(level="CRITICAL")))["priority"] == "P1"


class TestLimits:
    def test_message_130(self):
        """A long message is cut to 130 characters with the marker."""
        message = body(target().render(event(message="m" * 500)))["message"]
        assert len(message) == 130 and message.endswith(TRUNCATED)

    def test_description_15000(self):
        """Huge details are cut to the 15000-character description limit."""
        description = body(target().render(event(details="d" * 100_000)))["description"]
        assert len(description) == 15000 and description.endswith(TRUNCATED)

    def test_details_8000_total(self):
        """The details map stays within 8000 characters, details cut first, marked."""
        sent = body(target().render(event(details="d" * 20_000)))
        details = sent["details"]
        assert sum(len(k) + len(v) for k, v in details.items()) <= 8000
        assert details["details"].endswith(TRUNCATED)
        assert details["_truncated"] == TRUNCATED
        assert details["tag.host"] == "db-7"

    def test_tags_20_by_50(self):
        """At most 20 tags of at most 50 characters."""
        tags = {f"tag{i:02d}": "v" * 80 for i in range(40)}
        sent = body(target().render(event(tags=tags)))
        assert len(sent["tags"]) == 20
        assert all(len(t) <= 50 for t in sent["tags"])

    def test_long_id_alias(self):
        """An id over 512 characters gets a stable hash-suffixed alias, used by create and close."""
        ident = "x" * 600
        alias = body(target().render(event(ident=ident)))["alias"]
        assert len(alias) == 512 and alias != "x" * 512
        assert quote(alias, safe="") in target().render(recovery(ident=ident)).url

    def test_oversize_accepted_by_receiver(self):
        """An event oversized in every field is accepted by the strict receiver."""
        ev = event(ident="i" * 5000, message="m" * 5000, details='"' * 100_000, tags={"k" * 99: "v" * 9999})
        assert problems(OpsgenieReceiver(api_key=KEY), target().render(ev)) == []


class TestConfig:
    def test_unknown_key_rejected(self):
        """A typo is named in the error."""
        with pytest.raises(ConfigError, match=r"target\.t\.apikey"):
            build("opsgenie", {"api_key": KEY, "apikey": KEY})

    def test_api_key_required(self):
        """Without api_key the target is refused."""
        with pytest.raises(ConfigError, match=r"target\.t\.api_key"):
            build("opsgenie", {})

    def test_bad_priority(self):
        """Priorities outside P1..P5 are refused."""
        with pytest.raises(ConfigError, match=r"levels\.INFO"):
            target(levels={"INFO": "P6"})

    def test_secret_not_in_repr(self):
        """The API key never shows up in reprs."""
        assert KEY not in repr(target())


class TestReceiver:
    def test_create_then_close(self):
        """The live receiver opens on create and resolves on close by alias."""
        with OpsgenieReceiver(api_key=KEY) as rx:
            t = target(url=rx.url)
            created = send(t.render(event(ident="a/b:c=d")))
            assert created.status_code == 202 and "requestId" in created.json()
            assert rx.incidents == {"a/b:c=d": "open"}
            assert send(t.render(recovery(ident="a/b:c=d"))).status_code == 202
            assert rx.incidents == {"a/b:c=d": "resolved"}

    def test_close_without_identifier_type_rejected(self):
        """The silent-no-op close (no identifierType) is flagged, not accepted."""
        request = target().render(recovery())
        bare = type(request)(request.method, request.url.split("?")[0], request.headers, request.body)
        assert any("identifierType" in p for p in problems(OpsgenieReceiver(api_key=KEY), bare))

    def test_wrong_key_401(self):
        """A wrong GenieKey is answered 401."""
        with OpsgenieReceiver(api_key=KEY) as rx:
            assert send(build("opsgenie", {"api_key": "nope", "url": rx.url}).render(event())).status_code == 401

    def test_nested_details_422(self):
        """Nested details values are a 422, as on the real API."""
        request = target().render(event())
        sent = body(request)
        sent["details"] = {"x": {"nested": 1}}
        bad = type(request)(request.method, request.url, request.headers, json.dumps(sent).encode())
        assert any("nested" in p for p in problems(OpsgenieReceiver(api_key=KEY), bad))


class TestProperties:
    @FUZZ
    @given(alert_events())
    def test_every_event_is_valid(self, ev):
        """Any parseable event renders to a create or close the strict receiver accepts."""
        assert problems(OpsgenieReceiver(api_key=KEY), target().render(ev)) == []
