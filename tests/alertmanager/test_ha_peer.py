"""HA fan-out against two real Alertmanagers: each member gets every alert, a dead one holds back nobody."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.alertmanager.conftest import RESOLVE_TIMEOUT
from tests.alertmanager.peer import Alertmanager
from tests.bridge.harness import BridgeProcess, Receiver, kapacitor_event, wait_until

ID = "cpu:host=web-01"


@pytest.fixture
def second(webhook: Receiver, tmp_path: Path) -> Iterator[Alertmanager]:
    am = Alertmanager(webhook.url + "/hook2", resolve_timeout=f"{RESOLVE_TIMEOUT:g}s", workdir=tmp_path / "am2")
    am.start()
    try:
        yield am
    finally:
        am.kill9()
        am.stop()


def test_failing_member_retried_alone(alertmanager: Alertmanager, second: Alertmanager, tmp_path: Path) -> None:
    """Member 2 down: member 1 gets the trigger and the resolve at once; member 2 catches up when back."""
    config = f"""\
[server]
[store]
[delivery]
backoff_initial = "100ms"
backoff_max = "300ms"

[[target]]
name = "am"
type = "alertmanager"
url = "{alertmanager.url}"
urls = ["{second.url}"]
resend_interval = "1s"
"""
    bridge = BridgeProcess(config, tmp_path / "bridge")
    bridge.start()
    try:
        second.kill9()
        assert bridge.post_alert("am", kapacitor_event(ID, "CRITICAL"))[0] == 202
        wait_until(lambda: alertmanager.active().get(ID) == ["critical"], timeout=10, message="member 1 never fired")
        assert bridge.post_alert("am", kapacitor_event(ID, "OK", previous_level="CRITICAL"))[0] == 202
        wait_until(lambda: ID not in alertmanager.active(), timeout=5, message="member 1 held back by member 2")
        second.start()
        # Member 2 receives its own queue in order: CRITICAL then OK, ending resolved.
        def caught_up() -> bool:
            return second.received("firing") >= 1 and second.received("resolved") >= 1 and ID not in second.active()

        wait_until(caught_up, timeout=10, message="member 2 never caught up")
        assert alertmanager.active() == {} and second.active() == {}
    finally:
        bridge.close()
