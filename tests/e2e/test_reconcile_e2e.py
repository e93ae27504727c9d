"""Reconcile against a real kapacitord: what Kapacitor could not post while the bridge was down arrives.

Kapacitor posts each state change once and never retries. Here the bridge is stopped
while a task goes CRITICAL (or back to OK), so Kapacitor's POSTs fail; when the bridge
starts, its reconcile reads ``/kapacitor/v1/alerts/topics/.../events`` and the platform
gets the missing trigger or resolve.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest

from tests.bridge.harness import BridgeProcess, free_port, wait_until
from tests.e2e.kapacitord import REPO_ROOT, Kapacitord
from tests.e2e.stack import TARGET, bridge_config
from tests.receivers import RECEIVERS, Receiver

if TYPE_CHECKING:
    from tests.e2e.conftest import StartKapacitord

pytestmark = pytest.mark.e2e

DBRP = ("telegraf", "autogen")
TOKEN = "e2e-reconcile-token-81d3"
T0 = 1714564800
ALERT_ID = "cpu:host=web-1"
TOPIC = "main:cpu_alert:alert2"
BASELINE = [(0, 30.0), (30, 35.0)]
SPIKE = [(60, 95.0), (90, 96.0)]
RECOVERY = [(120, 40.0), (150, 38.0)]


def line(offset: int, value: float) -> str:
    return f"cpu,host=web-1,cpu=cpu-total usage_user={value} {T0 + offset}"


def kapacitor_section(kapacitor_url: str, routes: str = "") -> str:
    return "\n".join([
        "[kapacitor]",
        f'url = "{kapacitor_url}"',
        'reconcile_interval = "1h"',
        f'default_target = "{TARGET}"',
        routes,
    ])


@dataclass
class Stack:
    receiver: Receiver
    bridge: BridgeProcess
    kapacitord: Kapacitord

    def write(self, points: list[tuple[int, float]]) -> None:
        self.kapacitord.write(*DBRP, [line(t, v) for t, v in points])

    def kapacitor_level(self) -> str:
        events = self.kapacitord.topic_events(TOPIC)
        return str(events[0]["state"]["level"]) if events else "none"


@pytest.fixture
def stack(start_kapacitord: "StartKapacitord", tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Receiver + kapacitord (task cpu_alert, posting to the bridge's port) + bridge (not started)."""
    made: list[Stack] = []

    def make(routes: str = "") -> Stack:
        receiver = RECEIVERS["webhook"]().start()
        port = free_port()
        k = start_kapacitord(udf_prog=None, bridge_url=f"http://127.0.0.1:{port}/alerts/{TARGET}", bridge_token=TOKEN)
        config = bridge_config(receiver, kapacitor_section(k.base_url, routes), token=TOKEN)
        bridge = BridgeProcess(config, tmp_path / f"bridge-{len(made)}", port=port)
        bridge.token = TOKEN
        k.define_task("cpu_alert", (REPO_ROOT / "tick" / "cpu_alert.tick").read_text(encoding="utf-8"), dbrps=[DBRP])
        k.wait_task("cpu_alert", lambda t: bool(t["executing"]))
        s = Stack(receiver, bridge, k)
        made.append(s)
        return s

    yield make
    for s in reversed(made):
        s.bridge.close()
        s.receiver.stop()


def test_missed_resolve_is_sent_at_start(stack: Callable[..., Stack]) -> None:
    """CRITICAL delivered, bridge stopped, task back to OK (POST fails), bridge started: the platform resolves."""
    s = stack()
    s.bridge.start()
    s.write(BASELINE + SPIKE)
    wait_until(lambda: s.receiver.incidents.get(ALERT_ID) == "open", 15, message="incident opened")
    assert s.bridge.stop() == 0
    s.write(RECOVERY)
    wait_until(lambda: s.kapacitor_level() == "OK", 15, message="Kapacitor saw the recovery")
    wait_until(lambda: "non 2xx" in s.kapacitord.log_text() or "connection refused" in s.kapacitord.log_text(),
               10, message="Kapacitor's POST of the OK failed")
    assert s.receiver.incidents.get(ALERT_ID) == "open"

    dry = s.bridge.cli("reconcile", "--dry-run")
    assert (dry.returncode, dry.stdout.strip()) == (0, f"resolve {TARGET} {ALERT_ID}"), dry.stderr
    s.bridge.start()
    wait_until(lambda: s.receiver.incidents.get(ALERT_ID) == "resolved", 15, message="reconcile resolved it")
    assert s.bridge.metric("oncall_reconcile_actions_total", {"target": TARGET, "action": "resolve"}) == 1
    done = s.bridge.cli("reconcile", "--json")
    assert done.returncode == 0 and '"in_sync": true' in done.stdout, done.stdout + done.stderr


def test_missed_trigger_is_sent_at_start(stack: Callable[..., Stack]) -> None:
    """Bridge stopped while the task goes CRITICAL (POST fails), bridge started: the platform gets the trigger."""
    s = stack(routes=f'routes = {{ "main:cpu_*" = "{TARGET}" }}')
    s.write(BASELINE + SPIKE)
    wait_until(lambda: s.kapacitor_level() == "CRITICAL", 15, message="Kapacitor went CRITICAL")
    dry = s.bridge.cli("reconcile", "--dry-run")
    assert (dry.returncode, dry.stdout.strip()) == (0, f"trigger {TARGET} {ALERT_ID} CRITICAL"), dry.stderr
    s.bridge.start()
    wait_until(lambda: s.receiver.incidents.get(ALERT_ID) == "open", 15, message="reconcile triggered it")
    [body] = [r.json() for r in s.receiver.requests]
    assert (body["id"], body["level"]) == (ALERT_ID, "CRITICAL")
    # Kapacitor's own recovery then reaches the platform as usual.
    s.write(RECOVERY)
    wait_until(lambda: s.receiver.incidents.get(ALERT_ID) == "resolved", 15, message="recovery delivered")


def test_unreachable_kapacitor_changes_nothing(stack: Callable[..., Stack]) -> None:
    """Kapacitor down: reconcile does nothing, says so, and counts the error."""
    s = stack()
    s.bridge.start()
    s.write(BASELINE + SPIKE)
    wait_until(lambda: s.receiver.incidents.get(ALERT_ID) == "open", 15, message="incident opened")
    s.kapacitord.stop()
    result = s.bridge.cli("reconcile")
    assert result.returncode == 1 and "Kapacitor could not be read; nothing was changed" in result.stderr
    assert "kapacitor_unreachable" in result.stderr
    s.bridge.stop()
    s.bridge.start()
    s.bridge.wait_until(lambda: s.bridge.metric("oncall_reconcile_errors_total") == 1, message="error counted")
    assert s.receiver.incidents.get(ALERT_ID) == "open"


TOPIC_AND_HANDLER = """
stream
    |from()
        .measurement('cpu')
        .groupBy('host')
    |alert()
        .id('{{ .Name }}:{{ .Group }}')
        .message('{{ .ID }} is {{ .Level }}')
        .crit(lambda: "usage_user" > 90.0)
        .stateChangesOnly()
        .topic('cpu')
        .post()
            .endpoint('oncall-bridge')
"""


def test_id_in_two_topics_is_one_trigger(stack: Callable[..., Stack]) -> None:
    """A node with .topic('cpu') and a handler lists the id in two topics: reconcile sends one trigger."""
    s = stack(routes=f'routes = {{ "cpu" = "{TARGET}" }}')
    k = s.kapacitord
    k.define_task("cpu_topic", TOPIC_AND_HANDLER, dbrps=[DBRP])
    k.wait_task("cpu_topic", lambda t: bool(t["executing"]))
    s.write(BASELINE + SPIKE)
    for topic in ("cpu", "main:cpu_topic:alert2"):
        k.wait_for(functools.partial(k.topic_events, topic),
                   lambda ev: bool(ev) and ev[0]["state"]["level"] == "CRITICAL", 15, what=f"topic {topic}")
    dry = s.bridge.cli("reconcile", "--dry-run")
    assert (dry.returncode, dry.stdout.strip()) == (0, f"trigger {TARGET} {ALERT_ID} CRITICAL"), dry.stdout + dry.stderr
    s.bridge.start()
    wait_until(lambda: s.receiver.incidents.get(ALERT_ID) == "open", 15, message="reconcile triggered it")
    s.bridge.wait_until(lambda: s.bridge.metric("oncall_reconcile_actions_total", {"target": TARGET, "action": "trigger"}) == 1,
                        message="one trigger counted")
    assert [(r.json()["id"], r.json()["level"]) for r in s.receiver.requests] == [(ALERT_ID, "CRITICAL")]
