"""The production path, every hop real: InfluxDB → subscription → kapacitord → UDF → bridge → platform.

A real influxd (scripts/influxdb-build) runs on loopback; the ``telegraf`` database exists
before kapacitord starts, and kapacitord subscribes to it through the example config's
``[[influxdb]]`` table (only ``enabled`` and ``urls`` rendered). Points are written to
InfluxDB's ``/write`` only: whatever kapacitord sees came through the subscription or through
its own batch queries. Alerts go through the bridge to a strict platform receiver, and the
batch script's annotated points come back out of InfluxDB with InfluxQL.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bridge.harness import wait_until
from tests.e2e.influxd import Influxd
from tests.e2e.kapacitord import REPO_ROOT, Kapacitord
from tests.e2e.stack import TARGET, StackFactory

pytestmark = pytest.mark.e2e

STREAM_TICK = REPO_ROOT / "tick" / "cpu_alert_state.tick"
BATCH_TICK = REPO_ROOT / "tick" / "cpu_alert_state_batch.tick"
ALERT_FIELDS = {
    "alert_changed",
    "alert_count",
    "alert_duration",
    "alert_flapping",
    "alert_level",
    "alert_level_code",
    "alert_pending",
    "alert_previous_level",
}
T0 = 1714564800  # 2024-05-01T12:00:00Z
ALERT_ID = "cpu:host=web-1"


def wait_subscribed(influxd: Influxd, k: Kapacitord, db: str) -> dict[str, Any]:
    """The subscription kapacitord created on ``db.autogen``, pointing at its own loopback port."""
    destination = f"http://127.0.0.1:{k.http_port}"
    found: list[dict[str, Any]] = []

    def subscribed() -> bool:
        found[:] = [
            s for s in influxd.subscriptions()
            if s["db"] == db and s["retention_policy"] == "autogen" and destination in s["destinations"]
        ]
        return bool(found)

    wait_until(subscribed, 15, message=f"kapacitord's subscription to {db} ({influxd.subscriptions()})")
    return found[0]


def line(offset: int, value: float, host: str = "web-1") -> str:
    return f"cpu,host={host},cpu=cpu-total usage_user={value} {T0 + offset}"


#: Same spike as test_bridge_e2e: CRITICAL after for(1m) at 120 s, resolved at 210 s.
BASELINE = [(0, 30.0), (30, 35.0)]
SPIKE = [(60, 95.0), (90, 96.0), (120, 97.0), (150, 95.0), (180, 96.0)]
RECOVERY = [(210, 40.0), (240, 38.0)]


def test_points_written_to_influxdb_page_through_the_subscription(
    stack: StackFactory, influxd: Influxd, influx_db: str
) -> None:
    """InfluxDB forwards each write to kapacitord; the stream task pages once and resolves once."""
    s = stack("grafana-oncall", influxdb_url=influxd.url)
    k, receiver = s.kapacitord, s.receiver
    sub = wait_subscribed(influxd, k, influx_db)
    assert sub["mode"] == "ANY" and sub["name"].startswith("kapacitor-")

    task = STREAM_TICK.stem
    k.define_task(task, STREAM_TICK.read_text(encoding="utf-8"), dbrps=[(influx_db, "autogen")])
    k.wait_task(task, lambda t: bool(t["executing"]))

    influxd.write(influx_db, [line(t, v) for t, v in BASELINE + SPIKE], precision="s")
    wait_until(lambda: receiver.incidents.get(ALERT_ID) == "open", 20, message="incident opened")
    influxd.write(influx_db, [line(t, v) for t, v in RECOVERY], precision="s")
    wait_until(lambda: receiver.incidents.get(ALERT_ID) == "resolved", 20, message="incident resolved")
    time.sleep(0.3)  # room for a duplicate to show up before counting

    bodies = s.bodies()
    assert [(b["id"], b["level"], b["time"]) for b in bodies] == [
        (ALERT_ID, "CRITICAL", "2024-05-01T12:02:00Z"),
        (ALERT_ID, "OK", "2024-05-01T12:03:30Z"),
    ], bodies
    assert receiver.rejected == [] and receiver.failed == []
    row = dict(zip(bodies[0]["data"]["series"][0]["columns"], bodies[0]["data"]["series"][0]["values"][0]))
    assert (row["alert_level"], row["alert_changed"], row["usage_user"]) == ("CRITICAL", True, 97)

    # Every point came through the subscription: nothing else wrote to kapacitord.
    n_points = len(BASELINE + SPIKE + RECOVERY)
    task_json = k.task(task)
    assert task_json["error"] == ""
    assert task_json["stats"]["node-stats"]["stream0"]["collected"] == n_points
    assert s.bridge.metric("oncall_deliveries_total", {"target": TARGET, "outcome": "delivered"}) == 2


# --------------------------------------------------------------------------------------------
# batch|query() against InfluxDB, with for/recoverFor spanning several batches
# --------------------------------------------------------------------------------------------

#: Query period of the test run. kapacitord aligns each tick by rounding the wall clock to the
#: period and drops ticks that arrive while a query still runs, so a tick later than half a
#: period skips a window: 3 s leaves room for a busy CI machine.
PERIOD_S = 3
#: host=a's value per query window: four windows above crit, then three below warn.
WINDOWS_A = [95.0, 95.0, 95.0, 95.0, 40.0, 40.0, 40.0]
QUIET = 20.0
#: (level, pending, changed, previous) expected per window with for = 2 periods and
#: recoverFor = 1 period: CRITICAL is entered at the third high window, OK at the second low one.
EXPECTED_A = [
    ("OK", "CRITICAL", False, "OK"),
    ("OK", "CRITICAL", False, "OK"),
    ("CRITICAL", "", True, "OK"),
    ("CRITICAL", "", False, "OK"),
    ("CRITICAL", "OK", False, "OK"),
    ("OK", "", True, "CRITICAL"),
    ("OK", "", False, "CRITICAL"),
]


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def test_batch_query_task_waits_for_and_recover_for_over_several_batches(
    stack: StackFactory, influxd: Influxd, influx_db: str
) -> None:
    """The shipped batch script, with 3 s periods: annotated points land back in InfluxDB, one page, one resolve.

    All points are written up front with timestamps in the coming query windows (one point per
    host and window, so a window's mean is that point), and the aligned queries pick them up as
    the windows close.
    """
    s = stack("webhook", influxdb_url=influxd.url)
    k, receiver = s.kapacitord, s.receiver
    wait_subscribed(influxd, k, influx_db)

    first = (math.floor(time.time() / PERIOD_S) + 2) * PERIOD_S  # at least one whole period ahead
    starts = [first + i * PERIOD_S for i in range(len(WINDOWS_A))]
    lines = []
    for start, value in zip(starts, WINDOWS_A):
        t_ms = (start * 1000) + 500
        lines.append(f"cpu,host=a,cpu=cpu-total usage_user={value} {t_ms}")
        lines.append(f"cpu,host=b,cpu=cpu-total usage_user={QUIET} {t_ms}")
    influxd.write(influx_db, lines, precision="ms")

    task = BATCH_TICK.stem
    k.define_task(
        task,
        BATCH_TICK.read_text(encoding="utf-8"),
        dbrps=(),
        task_vars={
            "period": {"type": "duration", "value": _ns(PERIOD_S)},
            "enterAfter": {"type": "duration", "value": _ns(2 * PERIOD_S)},
            "recoverAfter": {"type": "duration", "value": _ns(PERIOD_S)},
        },
    )
    assert k.wait_task(task, lambda t: bool(t["executing"]) or bool(t["error"]))["type"] == "batch"

    query = 'SELECT * FROM "cpu_alert_state" WHERE "host" = \'{}\' ORDER BY time'
    deadline_s = starts[-1] + PERIOD_S - time.time() + 20
    wait_until(
        lambda: len(influxd.rows(query.format("a"), influx_db)) >= len(WINDOWS_A),
        deadline_s,
        message=f"annotated batches written back to InfluxDB\n{k.log_tail()}",
    )
    wait_until(lambda: receiver.incidents.get("cpu:host=a") == "resolved", 15, message="incident resolved")
    time.sleep(PERIOD_S)  # one more (empty) query: nothing else may be written or posted

    rows_a = influxd.rows(query.format("a"), influx_db)
    rows_b = influxd.rows(query.format("b"), influx_db)
    assert all(ALERT_FIELDS <= set(r) for r in rows_a + rows_b), rows_a[0]
    # A batch point's time is its window's start; its value the window's mean.
    assert [r["time"] for r in rows_a] == [
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)) for start in starts
    ]
    assert [r["usage_user"] for r in rows_a] == WINDOWS_A
    assert [
        (r["alert_level"], r["alert_pending"], r["alert_changed"], r["alert_previous_level"]) for r in rows_a
    ] == EXPECTED_A
    assert [r["alert_count"] for r in rows_a] == [1, 2, 1, 2, 3, 1, 2]
    assert [(r["alert_level"], r["alert_changed"]) for r in rows_b] == [("OK", False)] * len(WINDOWS_A)

    bodies = s.bodies()
    assert [(b["id"], b["level"]) for b in bodies] == [("cpu:host=a", "CRITICAL"), ("cpu:host=a", "OK")], bodies
    assert receiver.rejected == [] and receiver.failed == []
    assert bodies[0]["time"] == rows_a[2]["time"]  # the point that entered CRITICAL
    task_json = k.task(task)
    assert task_json["error"] == "", task_json["error"]
    assert all(st["errors"] == 0 for st in task_json["stats"]["node-stats"].values()), task_json["stats"]
