"""Silences: matchers and durations, the hold/release rules on a real store, and the whole
path through a running bridge (CLI, API, restart, expiry by time) against a receiver."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import requests

from bridge import silences
from bridge.silences import Matcher, SilenceError, parse_duration, parse_matcher
from bridge.store import open_store

from .conftest import webhook_config
from .harness import BridgeProcess, Receiver, kapacitor_event

#: Loopback only: never through a proxy from the environment.
HTTP = requests.Session()
HTTP.trust_env = False
TOKEN = "silence-test-token"


class TestMatchers:
    def test_value_keeps_colons_and_equals(self) -> None:
        """The name is the leading word and the operator the first after it; the rest is the value."""
        assert parse_matcher("id=~cpu:host=web-.*") == Matcher("id", "=~", "cpu:host=web-.*")
        assert parse_matcher("host!=db-1") == Matcher("host", "!=", "db-1")
        assert parse_matcher("level!~OK|INFO") == Matcher("level", "!~", "OK|INFO")
        assert parse_matcher(" target = pager ") == Matcher("target", "=", "pager")

    @pytest.mark.parametrize(
        ("text", "says"),
        [("=x", "expected NAME=VALUE"), ("id", "expected NAME=VALUE"), ("id=~(", "bad regular expression")],
    )
    def test_bad_matchers_are_named(self, text: str, says: str) -> None:
        with pytest.raises(SilenceError, match=says) as info:
            parse_matcher(text)
        assert repr(text) in str(info.value)

    def test_regexes_match_the_whole_value(self) -> None:
        """As in Alertmanager: ``cpu`` does not match ``cpu:host=web-01``."""
        fields = {"id": "cpu:host=web-01", "host": "web-01"}
        assert not parse_matcher("id=~cpu").test(fields)
        assert parse_matcher("id=~cpu:.*").test(fields)
        assert parse_matcher("id!~mem:.*").test(fields)

    def test_a_missing_tag_is_empty(self) -> None:
        assert parse_matcher("dc=").test({"id": "x"})
        assert not parse_matcher("dc=~.+").test({"id": "x"})

    def test_fields_come_from_the_event(self) -> None:
        """Tags of the series plus id, target and level."""
        from bridge.event import parse

        event = parse(json.dumps(kapacitor_event("cpu:host=web-01", "WARNING", tags={"host": "web-01", "dc": "a"})).encode())
        assert silences.fields_of("pager", event) == {
            "host": "web-01", "dc": "a", "id": "cpu:host=web-01", "target": "pager", "level": "WARNING",
        }


class TestDurations:
    @pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("1h30m", 5400), ("90s", 90), ("1d", 86400)])
    def test_accepted(self, text: str, seconds: float) -> None:
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "2", "0s", "31d", "2x", "h2", "1h 30m"])
    def test_refused(self, text: str) -> None:
        with pytest.raises(SilenceError, match="duration"):
            parse_duration(text)

    def test_a_silence_needs_matchers_and_a_comment(self, tmp_path: Path) -> None:
        conn = open_store(str(tmp_path / "s.db"))
        with pytest.raises(SilenceError, match="at least one matcher"):
            silences.add(conn, [], 60, "why", "me")
        with pytest.raises(SilenceError, match="comment"):
            silences.add(conn, [parse_matcher("id=x")], 60, "  ", "me")


# -- release rules on a real store file ----------------------------------------------


def _row(conn: sqlite3.Connection, key: str, level: str, state: str, target: str = "pager") -> int:
    body = json.dumps(kapacitor_event(key, level)).encode()
    cur = conn.execute(
        "INSERT INTO outbox (target, key, level, body, received_at, queued_at, state, next_attempt_at, done_at)"
        " VALUES (?, ?, ?, ?, 1, 1, ?, 1, ?)",
        (target, key, level, body, state, 2.0 if state not in ("pending", "inflight") else None),
    )
    return int(cur.lastrowid or 0)


def _told(conn: sqlite3.Connection, key: str, level: str, target: str = "pager") -> None:
    conn.execute(
        "INSERT INTO ledger (target, key, open, level, fired_levels, body, opened_at, told_at, seq)"
        " VALUES (?, ?, ?, ?, ?, x'7b7d', 1, 1, 0)",
        (target, key, int(level != "OK"), level, "" if level == "OK" else level),
    )


def _states(conn: sqlite3.Connection) -> Dict[int, str]:
    return {seq: state for seq, state in conn.execute("SELECT seq, state FROM outbox")}


class TestRelease:
    @pytest.fixture
    def conn(self, tmp_path: Path) -> sqlite3.Connection:
        return open_store(str(tmp_path / "release.db"))

    def test_resolve_of_a_told_trigger_is_sent(self, conn: sqlite3.Connection) -> None:
        """Trigger delivered before the silence, resolve during it: the resolve goes out."""
        _told(conn, "a", "CRITICAL")
        warn = _row(conn, "a", "WARNING", "silenced")
        ok = _row(conn, "a", "OK", "silenced")
        assert silences.release(conn.cursor()) == [("pager", "a", "sent")]
        assert _states(conn) == {warn: "superseded", ok: "pending"}

    def test_resolve_of_an_untold_trigger_is_not_sent(self, conn: sqlite3.Connection) -> None:
        """Trigger and resolve both during the silence: the platform hears nothing."""
        crit = _row(conn, "b", "CRITICAL", "silenced")
        ok = _row(conn, "b", "OK", "silenced")
        assert silences.release(conn.cursor()) == [("pager", "b", "dropped")]
        assert _states(conn) == {crit: "superseded", ok: "superseded"}

    def test_only_the_latest_trigger_goes_out(self, conn: sqlite3.Connection) -> None:
        rows = [_row(conn, "c", level, "silenced") for level in ("WARNING", "CRITICAL", "WARNING")]
        silences.release(conn.cursor())
        assert [_states(conn)[r] for r in rows] == ["superseded", "superseded", "pending"]

    def test_a_newer_pending_row_wins(self, conn: sqlite3.Connection) -> None:
        """Rows that arrived after the silence ended are already queued: no resend of old state."""
        held = _row(conn, "d", "CRITICAL", "silenced")
        newer = _row(conn, "d", "OK", "pending")
        silences.release(conn.cursor())
        assert _states(conn) == {held: "superseded", newer: "pending"}

    def test_ids_still_matched_stay_held(self, conn: sqlite3.Connection) -> None:
        silences.add(conn, [parse_matcher("id=~web-.*")], 3600, "maintenance", "me")
        kept = _row(conn, "web-1", "CRITICAL", "silenced")
        freed = _row(conn, "db-1", "CRITICAL", "silenced")
        assert silences.release(conn.cursor()) == [("pager", "db-1", "sent")]
        assert _states(conn) == {kept: "silenced", freed: "pending"}

    def test_expire_ends_a_silence_once(self, conn: sqlite3.Connection) -> None:
        made = silences.add(conn, [parse_matcher("id=x")], 3600, "maintenance", "me")
        assert silences.expire(conn, made.id).expired_at is not None
        assert silences.list_silences(conn) == []
        assert len(silences.list_silences(conn, include_ended=True)) == 1
        with pytest.raises(SilenceError, match="already ended"):
            silences.expire(conn, made.id)
        with pytest.raises(SilenceError, match="no silence with id"):
            silences.expire(conn, "nope")


# -- through a running bridge ----------------------------------------------------------


def _config(receiver: Receiver) -> str:
    return f'[server]\ntoken = "{TOKEN}"\n' + webhook_config(receiver.url + "/hook", name="pager")


def _states_of(bridge: BridgeProcess) -> List[tuple[str, str, str]]:
    conn = sqlite3.connect(f"file:{bridge.db_path}?mode=ro", uri=True)
    try:
        return list(conn.execute("SELECT key, level, state FROM outbox ORDER BY seq"))
    finally:
        conn.close()


def _wait_state(bridge: BridgeProcess, key: str, level: str, state: str) -> None:
    bridge.wait_until(lambda: (key, level, state) in _states_of(bridge), message=f"{key} {level} {state}")


def _active(bridge: BridgeProcess, count: int) -> None:
    """Wait until the serving bridge has read ``count`` active silences from the store."""
    bridge.wait_until(lambda: bridge.metric("oncall_silences_active") == count, message=f"{count} silences active")


def _api(bridge: BridgeProcess, path: str, doc: Optional[Dict[str, Any]] = None, *, token: str = TOKEN,
         content_type: str = "application/json") -> requests.Response:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return HTTP.post(bridge.url + path, data=json.dumps(doc or {}), headers=headers, timeout=10)


def _sent(receiver: Receiver) -> List[tuple[str, str]]:
    return [(b["id"], b["level"]) for b in receiver.json_bodies(only_accepted=True)]


class TestBridge:
    def test_hold_then_release_latest_state(self, make_bridge: Callable[..., BridgeProcess], receiver: Receiver) -> None:
        """CLI add → alerts stored as silenced, nothing sent; CLI expire → each id's latest state,
        a resolve only where the trigger had been sent."""
        bridge = make_bridge(_config(receiver))
        bridge.token = TOKEN
        assert bridge.post_alert("pager", kapacitor_event("cpu:host=web-01", "CRITICAL"))[0] == 202
        receiver.wait_for(1)
        _wait_state(bridge, "cpu:host=web-01", "CRITICAL", "delivered")
        added = bridge.cli("silence", "add", "--match", "id=~cpu:host=web-.*", "--for", "2h", "--comment", "patching web")
        assert added.returncode == 0, added.stderr
        silence_id = added.stdout.split()[0]
        _active(bridge, 1)
        for key, level in [("cpu:host=web-01", "WARNING"), ("cpu:host=web-01", "OK"),
                           ("cpu:host=web-02", "CRITICAL"), ("cpu:host=web-02", "OK"),
                           ("cpu:host=web-03", "CRITICAL")]:
            assert bridge.post_alert("pager", kapacitor_event(key, level))[0] == 202
        _wait_state(bridge, "cpu:host=web-03", "CRITICAL", "silenced")
        assert [s for _k, _l, s in _states_of(bridge)] == ["delivered"] + ["silenced"] * 5
        assert bridge.post_alert("pager", kapacitor_event("mem:host=db-1", "CRITICAL"))[0] == 202
        receiver.wait_for(2)
        assert _sent(receiver) == [("cpu:host=web-01", "CRITICAL"), ("mem:host=db-1", "CRITICAL")]
        listed = bridge.cli("silence", "list")
        assert silence_id in listed.stdout and "patching web" in listed.stdout
        assert bridge.metric("oncall_deliveries_total", {"target": "pager", "outcome": "silenced"}) == 5

        expired = bridge.cli("silence", "expire", silence_id)
        assert expired.returncode == 0, expired.stderr
        receiver.wait_for(4)
        _wait_state(bridge, "cpu:host=web-03", "CRITICAL", "delivered")
        assert sorted(_sent(receiver)[2:]) == [("cpu:host=web-01", "OK"), ("cpu:host=web-03", "CRITICAL")]
        assert ("cpu:host=web-02", "OK", "superseded") in _states_of(bridge)
        assert "no active silences" in bridge.cli("silence", "list").stdout
        time.sleep(1.5)  # two more release passes: nothing else may go out
        assert len(receiver.requests) == 4

    def test_silence_ends_by_itself(self, make_bridge: Callable[..., BridgeProcess], receiver: Receiver) -> None:
        bridge = make_bridge(_config(receiver))
        bridge.token = TOKEN
        resp = _api(bridge, "/api/silences", {"matchers": ["host=web-01"], "for": "2s", "comment": "short"})
        assert resp.status_code == 201, resp.text
        assert bridge.post_alert("pager", kapacitor_event("cpu:host=web-01", "CRITICAL"))[0] == 202
        _wait_state(bridge, "cpu:host=web-01", "CRITICAL", "silenced")
        assert receiver.requests == []
        receiver.wait_for(1, timeout=15)
        assert _sent(receiver) == [("cpu:host=web-01", "CRITICAL")]

    def test_survives_restart(self, make_bridge: Callable[..., BridgeProcess], receiver: Receiver) -> None:
        """Silences and held rows are in the store: a restarted bridge keeps holding them."""
        bridge = make_bridge(_config(receiver))
        bridge.token = TOKEN
        made = _api(bridge, "/api/silences", {"matchers": "level=~CRITICAL|WARNING", "for": "1h", "comment": "db move"})
        assert made.status_code == 201, made.text
        silence_id = made.json()["silence"]["id"]
        assert bridge.post_alert("pager", kapacitor_event("disk:host=db-1", "CRITICAL"))[0] == 202
        _wait_state(bridge, "disk:host=db-1", "CRITICAL", "silenced")
        bridge.kill9()
        bridge.start()
        listed = HTTP.get(bridge.url + "/api/silences", timeout=10).json()
        assert [s["id"] for s in listed] == [silence_id]
        assert bridge.post_alert("pager", kapacitor_event("disk:host=db-2", "WARNING"))[0] == 202
        _wait_state(bridge, "disk:host=db-2", "WARNING", "silenced")
        assert receiver.requests == []
        assert _api(bridge, f"/api/silences/{silence_id}/expire").status_code == 200
        receiver.wait_for(2)
        assert sorted(_sent(receiver)) == [("disk:host=db-1", "CRITICAL"), ("disk:host=db-2", "WARNING")]

    def test_api_refusals(self, make_bridge: Callable[..., BridgeProcess], receiver: Receiver) -> None:
        """Token, content type, matcher, duration and comment errors say what is wrong; nothing is stored."""
        bridge = make_bridge(_config(receiver))
        good = {"matchers": ["id=x"], "for": "1h", "comment": "why"}
        assert _api(bridge, "/api/silences", good, token="").status_code == 401
        assert _api(bridge, "/api/silences", good, token="wrong").status_code == 401
        assert _api(bridge, "/api/silences", good, content_type="text/plain").status_code == 415
        for doc, says in [({**good, "matchers": ["id=~("]}, "bad regular expression"),
                          ({**good, "for": "forever"}, "duration"),
                          ({**good, "comment": " "}, "comment"),
                          ({**good, "matchers": []}, "at least one matcher"),
                          ({"for": "1h", "comment": "x"}, "matchers")]:
            resp = _api(bridge, "/api/silences", doc)
            assert resp.status_code == 400 and says in resp.json()["error"], (doc, resp.text)
        assert _api(bridge, "/api/silences/nope/expire").status_code == 404
        assert HTTP.get(bridge.url + "/api/silences?all=1", timeout=10).json() == []

    def test_cli_errors(self, make_bridge: Callable[..., BridgeProcess], receiver: Receiver) -> None:
        bridge = make_bridge(_config(receiver), start=False)
        bad = bridge.cli("silence", "add", "--match", "id~x", "--for", "1h", "--comment", "c")
        assert bad.returncode == 2 and "expected NAME=VALUE" in bad.stderr
        missing = bridge.cli("silence", "expire", "feedbeef")
        assert missing.returncode == 2 and "no silence with id" in missing.stderr
        made = bridge.cli("silence", "add", "-m", "id=x", "-m", "host!=db-1", "--for", "30m", "--comment", "c",
                          "--by", "alice")
        assert made.returncode == 0, made.stderr
        listed = json.loads(bridge.cli("silence", "list", "--json").stdout)
        assert listed[0]["matchers"] == ["id=x", "host!=db-1"] and listed[0]["created_by"] == "alice"
