"""Silences: matchers and durations (pure); the hold/release contract through the Store
protocol on both backends (SQLite and a real PostgreSQL, one parametrised suite, as in
test_store_contract.py); the whole path through a running bridge (CLI, API, restart, expiry
by time) against a receiver; and on PostgreSQL, replicas sharing one set of silences, the
release job on one replica at a time, and the database going away."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Callable, Dict, List, Optional

import pytest
import requests

from bridge import silences
from bridge.backend import Store
from bridge.silences import Matcher, SilenceError, parse_duration, parse_matcher

from .conftest import webhook_config
from .harness import BridgeProcess, Receiver, kapacitor_event, wait_until
from .test_store_contract import Clock, Factory, box, clock, deliver, drain, make_store, put, take  # noqa: F401 - fixtures

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

    def test_a_silence_needs_matchers_and_a_comment(self) -> None:
        """Refused before anything is stored, naming what is missing."""
        with pytest.raises(SilenceError, match="at least one matcher"):
            silences.new_silence([], 60, "why", "me")
        with pytest.raises(SilenceError, match="comment"):
            silences.new_silence([parse_matcher("id=x")], 60, "  ", "me")


class TestReleaseRules:
    def test_should_send(self) -> None:
        """A newer queued event wins; a resolve goes out only for an incident the platform believes open."""
        assert silences.should_send("CRITICAL", newer_queued=False, told_open=False)
        assert not silences.should_send("CRITICAL", newer_queued=True, told_open=True)
        assert silences.should_send("OK", newer_queued=False, told_open=True)
        assert not silences.should_send("OK", newer_queued=False, told_open=False)

    def test_newest_per_id_and_releasable(self) -> None:
        """Only each id's newest held row counts, and only if no active silence matches it."""
        rows = [silences.Held(seq, "t", key, "CRITICAL", b"{}") for seq, key in [(3, "a"), (1, "a"), (2, "b")]]
        newest = silences.newest_per_id(rows)
        assert [(h.key, h.seq) for h in newest] == [("a", 3), ("b", 2)]
        web = silences.new_silence([parse_matcher("id=b")], 60, "why", "me", now=100.0)
        assert [h.key for h in silences.releasable(newest, [web])] == ["a"]


# -- the store contract: the same silences and release on SQLite and PostgreSQL --------------


def _held(box: Store, clock: Clock, key: str, level: str, n: int = 0) -> int:
    """Accept an event, claim it and finish it ``silenced`` (what delivery does when a silence holds it)."""
    seq = put(box, key, level, n=n)
    head = take(box, clock)
    assert head is not None and head.seq == seq
    box.finish(head, "silenced")
    return seq


def _state(box: Store, seq: int) -> str:
    row = box.load(seq)
    assert row is not None
    return row.state


def _silence(box: Store, clock: Clock, *matchers: str, seconds: float = 3600) -> silences.Silence:
    made = silences.new_silence([parse_matcher(m) for m in matchers], seconds, "maintenance", "me", now=clock())
    return box.add_silence(made)


class TestStoreSilences:
    def test_resolve_of_a_told_trigger_is_sent(self, box: Store, clock: Clock) -> None:
        """Trigger delivered before the silence, resolve during it: the resolve goes out, next in line."""
        deliver(box, clock, "a", "CRITICAL")
        warn = _held(box, clock, "a", "WARNING", 1)
        ok = _held(box, clock, "a", "OK", 2)
        assert box.release_silences(clock()) == [("t", "a", "sent")]
        assert (_state(box, warn), _state(box, ok)) == ("superseded", "pending")
        head = take(box, clock)
        assert head is not None and head.seq == ok
        assert take(box, clock) is None

    def test_resolve_of_an_untold_trigger_is_not_sent(self, box: Store, clock: Clock) -> None:
        """Trigger and resolve both during the silence: the platform hears nothing."""
        crit = _held(box, clock, "b", "CRITICAL")
        ok = _held(box, clock, "b", "OK", 1)
        assert box.release_silences(clock()) == [("t", "b", "dropped")]
        assert (_state(box, crit), _state(box, ok)) == ("superseded", "superseded")
        assert take(box, clock) is None

    def test_only_the_latest_trigger_goes_out(self, box: Store, clock: Clock) -> None:
        rows = [_held(box, clock, "c", level, n) for n, level in enumerate(("WARNING", "CRITICAL", "WARNING"))]
        assert box.release_silences(clock()) == [("t", "c", "sent")]
        assert [_state(box, r) for r in rows] == ["superseded", "superseded", "pending"]
        assert box.release_silences(clock()) == []

    def test_a_newer_pending_row_wins(self, box: Store, clock: Clock) -> None:
        """A row that arrived after the silence ended is already queued: no resend of the old state."""
        held = _held(box, clock, "d", "CRITICAL")
        newer = put(box, "d", "OK", n=1)
        assert box.release_silences(clock()) == [("t", "d", "dropped")]
        assert (_state(box, held), _state(box, newer)) == ("superseded", "pending")
        head = take(box, clock)
        assert head is not None and head.seq == newer

    def test_ids_still_matched_stay_held(self, box: Store, clock: Clock) -> None:
        made = _silence(box, clock, "id=~web-.*")
        assert [s.id for s in box.list_silences()] == [made.id]
        kept = _held(box, clock, "web-1", "CRITICAL")
        freed = _held(box, clock, "db-1", "CRITICAL")
        assert box.release_silences(clock()) == [("t", "db-1", "sent")]
        assert (_state(box, kept), _state(box, freed)) == ("silenced", "pending")
        box.expire_silence(made.id)
        assert box.release_silences(clock()) == [("t", "web-1", "sent")]

    def test_a_silence_ends_by_time(self, box: Store, clock: Clock) -> None:
        """No expire needed: past its end the silence is inactive and its ids are released."""
        _silence(box, clock, "id=e", seconds=60)
        held = _held(box, clock, "e", "CRITICAL")
        assert box.release_silences(clock()) == []
        clock.now += 61
        assert box.list_silences() == [] and len(box.list_silences(include_ended=True)) == 1
        assert box.release_silences(clock()) == [("t", "e", "sent")]
        assert _state(box, held) == "pending"

    def test_expire_ends_a_silence_once(self, box: Store, clock: Clock) -> None:
        made = _silence(box, clock, "id=x")
        ended = box.expire_silence(made.id)
        assert ended.expired_at == clock() and not ended.active(clock())
        assert box.list_silences() == []
        assert [s.id for s in box.list_silences(include_ended=True)] == [made.id]
        with pytest.raises(SilenceError, match="already ended"):
            box.expire_silence(made.id)
        with pytest.raises(SilenceError, match="no silence with id"):
            box.expire_silence("nope")

    def test_silences_and_held_rows_survive_a_restart(self, make_store: Factory, clock: Clock) -> None:
        first = make_store()
        made = _silence(first, clock, "id=f", "level!=INFO")
        held = _held(first, clock, "f", "CRITICAL")
        first.close()
        again = make_store()
        assert [(s.id, s.text) for s in again.list_silences()] == [(made.id, "id=f, level!=INFO")]
        assert _state(again, held) == "silenced" and again.release_silences(clock()) == []
        assert take(again, clock) is None


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

    def test_a_held_alert_spends_no_rate_token(self, make_bridge: Callable[..., BridgeProcess], receiver: Receiver) -> None:
        """Under ``rate_limit = "1/1h"`` a silenced alert is kept, not sent, so the one token of
        the hour is still there for the next alert (it used to go at the claim)."""
        config = f'[server]\ntoken = "{TOKEN}"\n' + webhook_config(
            receiver.url + "/hook", name="pager", target_extra='rate_limit = "1/1h"')
        bridge = make_bridge(config)
        bridge.token = TOKEN
        assert _api(bridge, "/api/silences", {"matchers": ["id=cpu:host=web-01"], "for": "1h", "comment": "c"}).status_code == 201
        _active(bridge, 1)
        assert bridge.post_alert("pager", kapacitor_event("cpu:host=web-01", "CRITICAL"))[0] == 202
        _wait_state(bridge, "cpu:host=web-01", "CRITICAL", "silenced")
        assert bridge.post_alert("pager", kapacitor_event("cpu:host=db-1", "CRITICAL"))[0] == 202
        receiver.wait_for(1, timeout=15)
        assert _sent(receiver) == [("cpu:host=db-1", "CRITICAL")]

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


# -- replicas on PostgreSQL: one set of silences, one release ----------------------------------


def _pg_states(dsn: str) -> List[tuple[str, str, str]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute("SELECT key, level, state FROM oncall_outbox ORDER BY seq")]


class TestReplicas:
    def test_a_silence_added_on_one_replica_holds_on_the_other(
        self, make_bridge: Callable[..., BridgeProcess], receiver: Receiver, pg_server: Any
    ) -> None:
        """Silence added through replica A; with A stopped, replica B holds the matching alerts. A back,
        B (holding the ``silences`` job) killed, the silence expired through A: A takes the job over
        after B's lease and each id's latest state reaches the platform exactly once."""
        from .test_pg import pg_config

        dsn = pg_server.create_database("silence")
        env = {"BRIDGE_PG_DSN": dsn}
        config = f'[server]\ntoken = "{TOKEN}"\n' + pg_config(receiver.url + "/hook")
        a = make_bridge(config, env=env)
        b = make_bridge(config, env=env)
        for bridge in (a, b):
            bridge.token = TOKEN
        assert a.post_alert("hook", kapacitor_event("cpu:host=web-01", "CRITICAL"))[0] == 202
        receiver.wait_for(1)
        made = _api(a, "/api/silences", {"matchers": ["id=~cpu:host=web-.*"], "for": "1h", "comment": "patching"})
        assert made.status_code == 201, made.text
        silence_id = made.json()["silence"]["id"]
        _active(b, 1)
        assert [s["id"] for s in HTTP.get(b.url + "/api/silences", timeout=10).json()] == [silence_id]
        a.stop()
        events = [("cpu:host=web-01", "WARNING"), ("cpu:host=web-01", "OK"), ("cpu:host=web-02", "CRITICAL"),
                  ("cpu:host=web-02", "OK"), ("cpu:host=web-03", "WARNING"), ("cpu:host=web-03", "CRITICAL")]
        for key, level in events:
            assert b.post_alert("hook", kapacitor_event(key, level))[0] == 202
        b.wait_until(lambda: [s for _k, _l, s in _pg_states(dsn)] == ["delivered"] + ["silenced"] * 6,
                     timeout=15, message="six rows held by replica b")
        assert len(receiver.requests) == 1
        assert b.metric("oncall_deliveries_total", {"target": "hook", "outcome": "silenced"}) == 6

        a.start()
        _active(a, 1)
        listed = a.cli("silence", "list", env=env)
        assert listed.returncode == 0 and silence_id in listed.stdout and "patching" in listed.stdout
        assert b.healthz()[1]["store"]["singletons"]["silences"] is True
        b.kill9()
        assert _api(a, f"/api/silences/{silence_id}/expire").status_code == 200
        receiver.wait_for(3, timeout=20)
        a.wait_until(lambda: ("cpu:host=web-03", "CRITICAL", "delivered") in _pg_states(dsn), timeout=15,
                     message="released row delivered")
        assert a.healthz()[1]["store"]["singletons"]["silences"] is True
        b.start()
        time.sleep(2.5)  # more release passes on both replicas: nothing else may go out
        assert sorted(_sent(receiver)[1:]) == [("cpu:host=web-01", "OK"), ("cpu:host=web-03", "CRITICAL")]
        assert ("cpu:host=web-02", "OK", "superseded") in _pg_states(dsn)
        assert "silenced" not in {s for _k, _l, s in _pg_states(dsn)}
        for bridge in (a, b):
            _active(bridge, 0)

    def test_cli_on_postgres(self, make_bridge: Callable[..., BridgeProcess], receiver: Receiver,
                             pg_server: Any) -> None:
        """`silence add|list|expire` against the shared database while a replica serves; it honours them."""
        from .test_pg import pg_config

        dsn = pg_server.create_database("silence_cli")
        env = {"BRIDGE_PG_DSN": dsn}
        bridge = make_bridge(pg_config(receiver.url + "/hook"), env=env)
        added = bridge.cli("silence", "add", "-m", "host=db-1", "--for", "30m", "--comment", "disk swap", "--by",
                           "alice", env=env)
        assert added.returncode == 0, added.stderr
        silence_id = added.stdout.split()[0]
        _active(bridge, 1)
        assert bridge.post_alert("hook", kapacitor_event("disk:host=db-1", "CRITICAL", tags={"host": "db-1"}))[0] == 202
        bridge.wait_until(lambda: ("disk:host=db-1", "CRITICAL", "silenced") in _pg_states(dsn), timeout=15,
                          message="held")
        listed = json.loads(bridge.cli("silence", "list", "--json", env=env).stdout)
        assert [(s["id"], s["created_by"]) for s in listed] == [(silence_id, "alice")]
        missing = bridge.cli("silence", "expire", "feedbeef", env=env)
        assert missing.returncode == 2 and "no silence with id" in missing.stderr
        assert bridge.cli("silence", "expire", silence_id, env=env).returncode == 0
        receiver.wait_for(1, timeout=15)
        assert _sent(receiver) == [("disk:host=db-1", "CRITICAL")]

        def told() -> bool:
            found = bridge.cli("incidents", "--json", env=env)
            return found.returncode == 0 and [i["id"] for i in json.loads(found.stdout)] == ["disk:host=db-1"]

        bridge.wait_until(told, message="`incidents` reads the database's ledger")


class TestReleaseJob:
    def test_only_the_holder_of_the_job_releases(self, pg_server: Any) -> None:
        """Two replicas' release passes: one holds the ``silences`` job and releases, the other does
        nothing; when the holder closes, the job (and the release) moves to the other."""
        from bridge.pg import PgOutbox

        dsn = pg_server.create_database("release_job")
        a = PgOutbox(dsn, replica_id="a", lease=10.0).open()
        b = PgOutbox(dsn, replica_id="b", lease=10.0).open()
        try:
            holder, other = (a, b) if a.holds("silences") else (b, a)
            assert holder.holds("silences") and not other.holds("silences")
            clock = Clock()
            clock.now = time.time() + 3600  # everything enqueued is due
            for key in ("x", "y"):
                seq = put(other, key, "CRITICAL")
                head = take(other, clock)
                assert head is not None and head.seq == seq
                other.finish(head, "silenced")
            assert other.release_silences() == []
            assert holder.release_silences() == [("t", "x", "sent"), ("t", "y", "sent")]
            assert holder.release_silences() == [] and other.release_silences() == []
            for head in drain(holder, clock):
                holder.finish(head, "delivered", attempts=1)
            holder.close()
            other.keep()
            assert other.holds("silences")
            put(other, "z", "WARNING")
            head = take(other, clock)
            assert head is not None and head.key == "z"
            other.finish(head, "silenced")
            assert other.release_silences() == [("t", "z", "sent")]
        finally:
            for box in (a, b):
                box.close()

    def test_every_replica_hears_of_a_change_at_once(self, pg_server: Any) -> None:
        """An add or expire through one replica (or the CLI) notifies every replica's silencer."""
        import threading

        import psycopg

        from bridge.pg import PgOutbox

        dsn = pg_server.create_database("silence_notify")
        a = PgOutbox(dsn, replica_id="a", lease=10.0).open()
        b = PgOutbox(dsn, replica_id="b", lease=10.0).open()
        heard = threading.Event()
        b.watch_silences(heard.set)
        try:
            def listening() -> bool:
                with psycopg.connect(dsn) as conn:
                    found = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                         " AND query = 'LISTEN oncall_silences'").fetchone()
                return found is not None and found[0] == 2

            wait_until(listening, message="both replicas' listeners connected")
            made = a.add_silence(silences.new_silence([parse_matcher("id=x")], 60, "why", "me"))
            assert heard.wait(5), "b was not told of the new silence"
            heard.clear()
            a.expire_silence(made.id)
            assert heard.wait(5), "b was not told of the expiry"
            assert b.list_silences() == []
        finally:
            for box in (a, b):
                box.close()


class TestDatabaseDown:
    def test_api_and_page_answer_503_then_recover(self, make_bridge: Callable[..., BridgeProcess],
                                                  receiver: Receiver) -> None:
        """PostgreSQL down: the silences API and the page say the store is unavailable (503, nothing
        claimed done); back up, a silence added then holds as before."""
        from tests.pgserver import PgServer

        from .test_pg import pg_config

        with PgServer() as server:
            env = {"BRIDGE_PG_DSN": server.create_database("down")}
            bridge = make_bridge(f'[server]\ntoken = "{TOKEN}"\n' + pg_config(receiver.url + "/hook"), env=env)
            bridge.token = TOKEN
            server.stop("immediate")
            doc = {"matchers": ["id=x"], "for": "1h", "comment": "during the outage"}
            added = _api(bridge, "/api/silences", doc)
            assert added.status_code == 503 and "store unavailable" in added.json()["error"], added.text
            assert HTTP.get(bridge.url + "/api/silences", timeout=30).status_code == 503
            page = HTTP.get(bridge.url + "/", timeout=30)
            assert page.status_code == 503 and "store unreadable" in page.json()["error"]
            server.start()
            bridge.wait_until(lambda: HTTP.get(bridge.url + "/", timeout=30).status_code == 200, timeout=30,
                              message="page back")
            assert HTTP.get(bridge.url + "/api/silences", timeout=10).json() == []
            assert _api(bridge, "/api/silences", doc).status_code == 201
            assert bridge.post_alert("hook", kapacitor_event("x", "CRITICAL"))[0] == 202
            bridge.wait_until(lambda: bridge.metric("oncall_deliveries_total", {"target": "hook",
                                                                                "outcome": "silenced"}) == 1,
                              timeout=15, message="held after the outage")
            assert receiver.requests == []
            bridge.close()
