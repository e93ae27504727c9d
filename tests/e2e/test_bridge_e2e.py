"""Kapacitor → bridge → on-call platform, every hop real: a spike opens one incident, recovery resolves it.

The stack per test: a strict local platform receiver (tests/receivers: it refuses anything the
real platform would refuse), ``kapacitor-oncall-bridge serve`` as a subprocess with a token,
and kapacitord running the example config whose ``[[httppost]] oncall-bridge`` endpoint points
at the bridge with that token. The TICKscripts are the shipped ones, unchanged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from tests.bridge.harness import wait_until
from tests.e2e.stack import TARGET, TOKEN, StackFactory
from tests.e2e.kapacitord import REPO_ROOT

if TYPE_CHECKING:
    from tests.e2e.conftest import StartKapacitord

pytestmark = pytest.mark.e2e

DBRP = ("telegraf", "autogen")
T0 = 1714564800  # 2024-05-01T12:00:00Z
ALERT_ID = "cpu:host=web-1"  # .id('{{ .Name }}:{{ .Group }}') of both scripts


def line(offset: int, value: float) -> str:
    return f"cpu,host=web-1,cpu=cpu-total usage_user={value} {T0 + offset}"


BASELINE = [(0, 30.0), (30, 35.0)]
#: 95 % from 60 s to 180 s: CRITICAL at once for the plain alert, after for(1m) at 120 s for
#: the alert-state script; three more CRITICAL points that must not page again.
SPIKE = [(60, 95.0), (90, 96.0), (120, 97.0), (150, 95.0), (180, 96.0)]
RECOVERY = [(210, 40.0), (240, 38.0)]


@pytest.mark.parametrize(
    ("tick", "target_type"),
    [("cpu_alert_state.tick", "grafana-oncall"), ("cpu_alert.tick", "webhook")],
    ids=["alert-state-to-grafana-oncall", "plain-alert-to-webhook"],
)
def test_spike_pages_once_and_recovery_resolves(stack: StackFactory, tick: str, target_type: str) -> None:
    """One CRITICAL spike: exactly one trigger reaches the platform; the recovery resolves that id."""
    s = stack(target_type)
    k, receiver, bridge = s.kapacitord, s.receiver, s.bridge
    task = Path(tick).stem
    k.define_task(task, (REPO_ROOT / "tick" / tick).read_text(encoding="utf-8"), dbrps=[DBRP])
    k.wait_task(task, lambda t: bool(t["executing"]))

    k.write(*DBRP, [line(t, v) for t, v in BASELINE + SPIKE])
    wait_until(lambda: receiver.incidents.get(ALERT_ID) == "open", 15, message="incident opened")
    k.write(*DBRP, [line(t, v) for t, v in RECOVERY])
    wait_until(lambda: receiver.incidents.get(ALERT_ID) == "resolved", 15, message="incident resolved")
    # Kapacitor posts a handler's events in order and the bridge delivers one id in order, so
    # a second trigger caused by the spike would have arrived before the resolve. Give a late
    # duplicate of the recovery a moment to show up too.
    time.sleep(0.3)

    bodies = s.bodies()
    assert [(b["id"], b["level"]) for b in bodies] == [(ALERT_ID, "CRITICAL"), (ALERT_ID, "OK")], bodies
    assert receiver.rejected == [] and receiver.failed == []
    trigger, resolve = bodies
    assert trigger["previousLevel"] == "OK" and resolve["previousLevel"] == "CRITICAL"
    assert trigger["time"] == ("2024-05-01T12:02:00Z" if tick == "cpu_alert_state.tick" else "2024-05-01T12:01:00Z")
    assert resolve["time"] == "2024-05-01T12:03:30Z"
    (series,) = trigger["data"]["series"]
    assert series["tags"]["host"] == "web-1"
    if tick == "cpu_alert_state.tick":
        # The UDF's annotation travels with the alert to the platform.
        row = dict(zip(series["columns"], series["values"][0]))
        assert (row["alert_level"], row["alert_changed"], row["alert_previous_level"]) == ("CRITICAL", True, "OK")

    labels = {"target": TARGET}
    assert bridge.metric("oncall_alerts_received_total", {**labels, "outcome": "accepted"}) == 2
    assert bridge.metric("oncall_deliveries_total", {**labels, "outcome": "delivered"}) == 2
    assert not bridge.metric("oncall_deliveries_total", {**labels, "outcome": "dead"})
    assert k.task(task)["error"] == ""


def test_systemd_unit_runs_serve_with_a_checked_config() -> None:
    """deploy/'s bridge unit runs ``serve --config F`` after ``check-config`` of the same F, before Kapacitor."""
    unit = (REPO_ROOT / "deploy" / "kapacitor-oncall-bridge.service").read_text(encoding="utf-8")
    (start,) = re.findall(r"^ExecStart=(.+)$", unit, re.M)
    (pre,) = re.findall(r"^ExecStartPre=(.+)$", unit, re.M)
    prog, command, flag, config = start.split()
    assert (Path(prog).name, command, flag) == ("kapacitor-oncall-bridge", "serve", "--config")
    assert pre.split() == [prog, "check-config", "--config", config]
    assert re.search(r"^Before=.*\bkapacitor\.service\b", unit, re.M)
    assert re.search(r"^StateDirectory=kapacitor-oncall$", unit, re.M)
    assert re.search(r"^WorkingDirectory=/var/lib/kapacitor-oncall$", unit, re.M)


def test_wrong_token_is_refused_and_nothing_reaches_the_platform(stack: StackFactory) -> None:
    """Kapacitor with a stale token gets 401 from the bridge; the platform sees nothing."""
    s = stack("webhook", kapacitor_token="stale-token")
    k = s.kapacitord
    k.define_task("cpu_alert", (REPO_ROOT / "tick" / "cpu_alert.tick").read_text(encoding="utf-8"), dbrps=[DBRP])
    k.wait_task("cpu_alert", lambda t: bool(t["executing"]))
    k.write(*DBRP, [line(0, 30.0), line(30, 97.0)])
    s.bridge.wait_until(
        lambda: s.bridge.metric("oncall_alerts_received_total", {"target": TARGET, "outcome": "unauthorized"}) == 1,
        message="bridge refused the post",
    )
    wait_until(lambda: 'msg="POST returned non 2xx status code"' in k.log_text(), 10, message="kapacitord logged the 401")
    assert re.search(r'msg="POST returned non 2xx status code".*code=401', k.log_text())
    assert s.receiver.requests == []
    # tick/ uses .captureResponse(): kapacitord's log carries the bridge's own explanation,
    # and the bridge logged the refusal with the caller's address (never the token).
    assert "missing or wrong bearer token" in k.log_text()
    (rejected,) = s.bridge.events("request.rejected")
    assert (rejected["status"], rejected["target"], rejected["auth"]) == (401, TARGET, "wrong token")
    assert rejected["remote"] == "127.0.0.1" and "stale-token" not in s.bridge.log_text()
