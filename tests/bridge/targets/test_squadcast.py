"""Squadcast Incident Webhook formatter, checked against the strict Squadcast receiver."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from bridge.errors import ConfigError
from bridge.targets.base import TRUNCATED
from tests.receivers import SquadcastReceiver, validate_squadcast
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, build, event, problems, recovery, send

TOKEN = "0123456789abcdef0123456789abcdef01234567"
URL = f"https://api.squadcast.com/v2/incidents/api/{TOKEN}"


def target(**extra):
    return build("squadcast", {"url": URL, **extra})


def body(request):
    return json.loads(request.body)


class TestRender:
    def test_trigger(self):
        """A trigger carries message, description, event_id and a severity tag."""
        sent = body(target().render(event()))
        assert sent["status"] == "trigger"
        assert sent["event_id"] == "disk_used:host=db-7"
        assert sent["message"] == "Disk almost full on db-7"
        assert sent["description"] == "used_percent=97.4 (crit > 95)"
        assert sent["tags"]["severity"] == "critical"
        assert sent["tags"]["host"] == "db-7"
        assert validate_squadcast(sent) == []

    def test_description_never_empty(self):
        """Without details the description repeats the title (both are mandatory)."""
        assert body(target().render(event(details="")))["description"] == "Disk almost full on db-7"

    def test_resolve(self):
        """OK is the documented minimal resolve body."""
        assert body(target().render(recovery())) == {"status": "resolve", "event_id": "disk_used:host=db-7"}

    def test_levels_override(self):
        """The severity tag follows ``levels``."""
        assert body(target(levels={"INFO": "low"}).render(event(level="INFO")))["tags"]["severity"] == "low"

    def test_reserved_tag_wins(self):
        """A series tag named ``severity`` cannot override the mapped level."""
        sent = body(target().render(event(tags={"severity": "bogus"})))
        assert sent["tags"]["severity"] == "critical"


class TestLimits:
    def test_body_under_30kb(self):
        """A huge description is cut so the body stays under 30 KB, marked."""
        request = target().render(event(details="é" * 100_000))
        assert len(request.body) <= 30_000
        assert body(request)["description"].endswith(TRUNCATED)
        assert problems(SquadcastReceiver(token=TOKEN), request) == []

    def test_everything_huge(self):
        """Huge id, message, tags and details together still make a valid body."""
        ev = event(ident="\x00" * 4096, message='"' * 50_000, details="d" * 50_000, tags={f"t{i}": "v" * 300 for i in range(200)})
        request = target().render(ev)
        assert len(request.body) <= 30_000
        assert problems(SquadcastReceiver(token=TOKEN), request) == []


class TestConfig:
    def test_unknown_key_rejected(self):
        """A typo is named in the error."""
        with pytest.raises(ConfigError, match=r"target\.t\.token"):
            build("squadcast", {"url": URL, "token": "x"})

    def test_url_required(self):
        """The URL carries the token and has no default."""
        with pytest.raises(ConfigError, match=r"target\.t\.url"):
            build("squadcast", {})

    def test_empty_level_refused(self):
        """An empty severity tag is refused."""
        with pytest.raises(ConfigError, match=r"levels\.WARNING"):
            target(levels={"WARNING": " "})

    def test_secret_not_in_repr(self):
        """The token-bearing URL never shows up in reprs."""
        assert TOKEN not in repr(target())


class TestReceiver:
    def test_trigger_then_resolve(self):
        """The live receiver opens then resolves the incident for the event_id."""
        with SquadcastReceiver(token=TOKEN) as rx:
            t = target(url=rx.url)
            assert send(t.render(event())).status_code == 202
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            assert send(t.render(recovery())).status_code == 202
            assert rx.incidents == {"disk_used:host=db-7": "resolved"}

    def test_oversize_413(self):
        """A body over 30 KB gets 413, as documented."""
        with SquadcastReceiver(token=TOKEN) as rx:
            request = target(url=rx.url).render(event())
            big = type(request)(request.method, request.url, request.headers, json.dumps({"message": "m", "description": "d" * 40_000}).encode())
            assert send(big).status_code == 413


class TestProperties:
    @FUZZ
    @given(alert_events())
    def test_every_event_is_valid(self, ev):
        """Any parseable event renders to a body the strict receiver accepts."""
        assert problems(SquadcastReceiver(token=TOKEN), target().render(ev)) == []
