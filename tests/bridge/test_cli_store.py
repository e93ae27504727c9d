"""The store subcommands against a real bridge: order-safe replay, incidents, move and drop."""

from __future__ import annotations

import json
import time
from typing import Callable

from .conftest import webhook_config
from .harness import BridgeProcess, Receiver, Recorded, kapacitor_event

MakeBridge = Callable[..., BridgeProcess]


def by_level(recorded: Recorded) -> int:
    """The platform of issue 13: 400 for a CRITICAL, 200 for anything else."""
    return 400 if recorded.json()["level"] == "CRITICAL" else 200


def levels_of(receiver: Receiver, key: str) -> list[str]:
    return [r.json()["level"] for r in receiver.requests if 200 <= r.status < 300 and r.json()["id"] == key]


class TestOrderSafeReplay:
    def test_superseded_dead_letter_is_not_resent(self, make_bridge: MakeBridge) -> None:
        """Issue 13 item 5: CRITICAL dead-lettered (400), OK delivered, `replay --id X` must not
        re-open the incident; `--force` sends it and says it re-opens it."""
        platform = Receiver(handler=by_level)
        try:
            bridge = make_bridge(webhook_config(platform.url + "/hook"))
            assert bridge.post_alert("hook", kapacitor_event("X", "CRITICAL"))[0] == 202
            bridge.wait_until(lambda: bridge.metric("oncall_outbox_dead", {"target": "hook"}) == 1, message="dead")
            assert bridge.post_alert("hook", kapacitor_event("X", "OK"))[0] == 202
            bridge.wait_until(lambda: levels_of(platform, "X") == ["OK"], message="OK delivered")

            replay = bridge.cli("replay", "--id", "X")
            assert replay.returncode == 0, replay.stderr
            assert "replayed 0 dead letter(s)" in replay.stdout
            assert "superseded #1 hook id='X' level=CRITICAL" in replay.stdout and "#2, OK, delivered" in replay.stdout
            time.sleep(1.5)
            assert len(platform.requests) == 2, "the superseded CRITICAL was re-sent"
            assert bridge.metric("oncall_outbox_dead", {"target": "hook"}) == 1

            platform.handler = None  # the platform now takes CRITICALs too
            forced = bridge.cli("replay", "--id", "X", "--force")
            assert forced.returncode == 0, forced.stderr
            assert "replayed 1 dead letter(s)" in forced.stdout
            assert "re-opens hook X at CRITICAL" in forced.stderr
            platform.wait_for(3)
            assert platform.requests[-1].json()["level"] == "CRITICAL"
            incidents = json.loads(bridge.cli("incidents", "--json").stdout)
            assert [(i["id"], i["level"]) for i in incidents] == [("X", "CRITICAL")]
        finally:
            platform.stop()

    def test_latest_dead_letter_is_replayed(self, make_bridge: MakeBridge) -> None:
        """A dead letter that is the id's latest event goes out again as before."""
        platform = Receiver(handler=by_level)
        try:
            bridge = make_bridge(webhook_config(platform.url + "/hook"))
            assert bridge.post_alert("hook", kapacitor_event("Y", "OK"))[0] == 202
            assert bridge.post_alert("hook", kapacitor_event("Y", "CRITICAL"))[0] == 202
            bridge.wait_until(lambda: bridge.metric("oncall_outbox_dead", {"target": "hook"}) == 1, message="dead")
            platform.handler = None
            replay = bridge.cli("replay", "--id", "Y")
            assert "replayed 1 dead letter(s)" in replay.stdout and "superseded" not in replay.stdout
            bridge.wait_until(lambda: levels_of(platform, "Y") == ["OK", "CRITICAL"], message="replayed")
        finally:
            platform.stop()


class TestIncidents:
    def test_lists_open_incidents_and_survives_kill_9(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """`incidents` lists what the platform believes is open (age, last delivery), the same
        after kill -9; /metrics exports oncall_incidents_open{target}."""
        bridge = make_bridge(webhook_config(receiver.url + "/hook"))
        for key, level in (("a", "WARNING"), ("a", "CRITICAL"), ("b", "CRITICAL"), ("b", "OK"), ("c", "INFO")):
            assert bridge.post_alert("hook", kapacitor_event(key, level))[0] == 202
        receiver.wait_for(5)
        bridge.wait_until(lambda: bridge.metric("oncall_incidents_open", {"target": "hook"}) == 2, message="ledger")
        text = bridge.cli("incidents")
        assert text.returncode == 0, text.stderr
        assert "hook id='a' level=CRITICAL fired=WARNING,CRITICAL open " in text.stdout
        assert "hook id='c' level=INFO" in text.stdout and "id='b'" not in text.stdout
        assert "2 open incident(s)" in text.stdout
        bridge.kill9()
        listing = json.loads(bridge.cli("incidents", "--json", "--target", "hook").stdout)
        assert [(i["id"], i["level"], i["fired_levels"]) for i in listing] == [
            ("a", "CRITICAL", ["WARNING", "CRITICAL"]),
            ("c", "INFO", ["INFO"]),
        ]
        assert all(i["age_seconds"] >= 0 and i["told_at"].endswith("Z") for i in listing)
        assert "no open incidents for target 'other'" in bridge.cli("incidents", "--target", "other").stdout


def renamed(bridge: BridgeProcess, old: str, new: str) -> None:
    text = bridge.config_path.read_text()
    bridge.config_path.write_text(text.replace(f'name = "{old}"', f'name = "{new}"'))


class TestMoveDrop:
    def _orphans(self, make_bridge: MakeBridge) -> tuple[BridgeProcess, Receiver]:
        """Three alerts queued for target `old` while its platform is down, then `old` is renamed `new`."""
        platform = Receiver()
        platform.stop()
        bridge = make_bridge(webhook_config(platform.url + "/hook", name="old", backoff_initial="5s", backoff_max="5s"))
        for key in ("a", "b", "c"):
            assert bridge.post_alert("old", kapacitor_event(key))[0] == 202
        bridge.stop()
        renamed(bridge, "old", "new")
        return bridge, platform

    def test_orphans_are_visible_not_aged(self, make_bridge: MakeBridge) -> None:
        """Rows of an unconfigured target show in oncall_outbox_orphaned, not in the age gauge."""
        bridge, platform = self._orphans(make_bridge)
        bridge.start()
        time.sleep(1.1)
        assert bridge.metric("oncall_outbox_orphaned") == 3
        assert bridge.metric("oncall_outbox_oldest_age_seconds") == 0.0
        queue = bridge.cli("queue")
        assert "(not configured)" in queue.stdout

    def test_move_refused_while_serving_then_moves(self, make_bridge: MakeBridge) -> None:
        """`move` refuses while `serve` holds the store; stopped, it moves and says what; the
        restarted bridge delivers the moved rows."""
        bridge, platform = self._orphans(make_bridge)
        bridge.start()
        refused = bridge.cli("move", "--from", "old", "--to", "new")
        assert refused.returncode == 3 and "a bridge is serving from this store" in refused.stderr
        bridge.stop()
        moved = bridge.cli("move", "--from", "old", "--to", "new")
        assert moved.returncode == 0, moved.stderr
        assert "moved 3 row(s) from 'old' to 'new' (3 pending)" in moved.stdout
        platform.up()
        try:
            bridge.start()
            platform.wait_for(3, timeout=20)
            assert sorted(r.json()["id"] for r in platform.requests) == ["a", "b", "c"]
            assert bridge.metric("oncall_outbox_orphaned") == 0
            again = bridge.cli("move", "--from", "old", "--to", "new")
            assert "refuse" not in again.stdout and again.returncode == 3
        finally:
            platform.stop()

    def test_drop_refused_while_serving_then_drops(self, make_bridge: MakeBridge) -> None:
        """`drop` refuses while serving; stopped, it deletes the target's rows and says how many."""
        bridge, platform = self._orphans(make_bridge)
        bridge.start()
        refused = bridge.cli("drop", "--target", "old")
        assert refused.returncode == 3 and "stop it first" in refused.stderr
        bridge.stop()
        dropped = bridge.cli("drop", "--target", "old")
        assert dropped.returncode == 0, dropped.stderr
        assert "dropped 3 row(s) of 'old' (3 pending)" in dropped.stdout
        assert "nothing to drop" in bridge.cli("drop", "--target", "old").stdout
        bridge.start()
        assert bridge.metric("oncall_outbox_orphaned") == 0
        platform.stop()
