"""The bridge against a real Alertmanager (short resolve_timeout): alerts stay, come back, resolve exactly.

Every test runs ``kapacitor-oncall-bridge serve`` as a subprocess posting to an
``alertmanager`` built from the Go module proxy; Alertmanager's own webhook
notifications are captured to see what on-call people would receive.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.alertmanager.conftest import RESOLVE_TIMEOUT
from tests.alertmanager.peer import Alertmanager
from tests.bridge.harness import BridgeProcess, Receiver, kapacitor_event, wait_until

RESEND = 1.5
ID = "cpu:host=web-01"


def bridge_config(am_url: str) -> str:
    return f"""\
[server]
[store]
[delivery]
backoff_initial = "100ms"
backoff_max = "500ms"

[[target]]
name = "am"
type = "alertmanager"
url = "{am_url}"
resend_interval = "{RESEND}s"
"""


@pytest.fixture
def bridge(alertmanager: Alertmanager, tmp_path: Path) -> Iterator[BridgeProcess]:
    proc = BridgeProcess(bridge_config(alertmanager.url), tmp_path / "bridge")
    proc.start()
    try:
        yield proc
    finally:
        proc.close()


def post(bridge: BridgeProcess, level: str, previous: str = "OK", ident: str = ID) -> None:
    status, body = bridge.post_alert("am", kapacitor_event(ident, level, previous_level=previous))
    assert status == 202, body


def notifications(webhook: Receiver) -> List[Dict[str, Any]]:
    return [r.json() for r in webhook.requests if r.path == "/hook"]


def hold_active(am: Alertmanager, seconds: float, ident: str = ID, severities: List[str] = ["critical"]) -> None:
    """Assert the id stays active with exactly ``severities`` for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert am.active().get(ident) == severities, am.active()
        time.sleep(0.25)


class TestControl:
    def test_unrefreshed_alert_resolves_after_resolve_timeout(self, alertmanager: Alertmanager) -> None:
        """Without re-posts Alertmanager drops a firing alert after resolve_timeout (what keep-alive prevents)."""
        assert alertmanager.post([{"labels": {"alertname": "control", "kapacitor_id": "x"}}]).status_code == 200
        assert alertmanager.active() == {"x": [""]}
        wait_until(lambda: alertmanager.active() == {}, timeout=RESOLVE_TIMEOUT * 3, message="control alert never resolved")


class TestKeepAlive:
    def test_critical_stays_active(self, bridge: BridgeProcess, alertmanager: Alertmanager) -> None:
        """A CRITICAL posted once stays active for 3 x resolve_timeout."""
        post(bridge, "CRITICAL")
        wait_until(lambda: alertmanager.active().get(ID) == ["critical"], timeout=10, message="never active")
        hold_active(alertmanager, 3 * RESOLVE_TIMEOUT)

    def test_back_after_alertmanager_restart(self, bridge: BridgeProcess, alertmanager: Alertmanager) -> None:
        """kill -9 and restart of Alertmanager: the open alert is active again within one resend_interval."""
        post(bridge, "CRITICAL")
        wait_until(lambda: alertmanager.active().get(ID) == ["critical"], timeout=10, message="never active")
        alertmanager.kill9()
        alertmanager.start()
        restarted = time.monotonic()
        assert alertmanager.active() == {}
        wait_until(lambda: alertmanager.active().get(ID) == ["critical"], timeout=RESEND + 1.0,
                   message="not re-posted within one resend_interval")
        assert time.monotonic() - restarted <= RESEND + 1.0

    def test_ok_resolves_only_fired_severities(
        self, bridge: BridgeProcess, alertmanager: Alertmanager, webhook: Receiver
    ) -> None:
        """WARNING, CRITICAL, OK: resolved in seconds; Alertmanager's notifications name only warning and critical."""
        def notified(severity: str) -> bool:
            return any(a["status"] == "firing" and a["labels"]["severity"] == severity
                       for n in notifications(webhook) for a in n["alerts"])

        post(bridge, "WARNING")
        wait_until(lambda: notified("warning"), timeout=15, message="warning never notified")
        post(bridge, "CRITICAL", previous="WARNING")
        wait_until(lambda: notified("critical"), timeout=15, message="critical never notified")
        assert alertmanager.active().get(ID) == ["critical"]
        post(bridge, "OK", previous="CRITICAL")
        started = time.monotonic()
        wait_until(lambda: ID not in alertmanager.active(), timeout=5, message="OK did not resolve")
        assert time.monotonic() - started < 5
        resolved = wait_until(
            lambda: [n for n in notifications(webhook) if n["status"] == "resolved"], timeout=15,
            message=f"no resolved notification: {notifications(webhook)}\n{alertmanager.alerts()}",
        )
        severities = {a["labels"]["severity"] for n in notifications(webhook) for a in n["alerts"]}
        assert severities == {"warning", "critical"}
        assert {a["labels"]["severity"] for a in resolved[-1]["alerts"]} == {"warning", "critical"}
        assert all(a["status"] == "resolved" for a in resolved[-1]["alerts"])
        # Resolved means resolved: the keep-alive does not bring it back.
        time.sleep(2 * RESEND)
        assert ID not in alertmanager.active()

    def test_bridge_kill9_keeps_alert_alive(self, bridge: BridgeProcess, alertmanager: Alertmanager, webhook: Receiver) -> None:
        """kill -9 of the bridge between resends: after restart the keep-alive carries on from the store."""
        post(bridge, "CRITICAL")
        wait_until(lambda: alertmanager.active().get(ID) == ["critical"], timeout=10, message="never active")
        time.sleep(RESEND / 2)
        bridge.kill9()
        time.sleep(RESEND)
        bridge.start()
        hold_active(alertmanager, 3 * RESOLVE_TIMEOUT)
        assert not [n for n in notifications(webhook) if n["status"] == "resolved"]

    def test_future_event_time_accepted(self, bridge: BridgeProcess, alertmanager: Alertmanager) -> None:
        """An event time far in the future is not refused (startsAt clamped to now): the alert fires."""
        event = kapacitor_event(ID, "CRITICAL", time="2999-01-01T00:00:00Z")
        assert bridge.post_alert("am", event)[0] == 202
        wait_until(lambda: alertmanager.active().get(ID) == ["critical"], timeout=10, message="future alert lost")


class TestIdentity:
    def test_ok_with_other_non_group_tag_resolves(self, bridge: BridgeProcess, alertmanager: Alertmanager) -> None:
        """CRITICAL with cpu=cpu3, OK with cpu=cpu-total (groupBy host): the OK still resolves the alert."""
        fire = kapacitor_event(ID, "CRITICAL", tags={"host": "web-01", "cpu": "cpu3"})
        assert bridge.post_alert("am", fire)[0] == 202
        wait_until(lambda: alertmanager.active().get(ID) == ["critical"], timeout=10, message="never active")
        [alert] = alertmanager.alerts(active="true")
        assert alert["labels"] == {"alertname": "cpu", "host": "web-01", "kapacitor_id": ID, "severity": "critical"}
        assert alert["annotations"]["cpu"] == "cpu3"
        ok = kapacitor_event(ID, "OK", previous_level="CRITICAL", tags={"host": "web-01", "cpu": "cpu-total"})
        assert bridge.post_alert("am", ok)[0] == 202
        wait_until(lambda: ID not in alertmanager.active(), timeout=5, message="OK with another cpu tag did not resolve")
