"""Every TICKscript in tick/ runs in a real kapacitord and does what its comments promise.

The test is parametrized over ``tick/*.tick``, so a new script is covered the moment it is
added: it must define, enable, reach ``executing`` without error, and react to a CPU spike
(annotated output shows a problem level, alert nodes fire) and to the recovery (back to OK).
The scripts shipped today additionally have exact expectations in ``EXPECTED``.

Batch scripts (``batch|query()``) need InfluxDB: tests/e2e/test_influxdb_e2e.py runs them.
All scripts read ``cpu`` points grouped by ``host`` with the field ``usage_user`` (what
Telegraf's cpu input writes); the feed is data time, so a one-minute ``for()`` passes in
milliseconds of wall time.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from tests.e2e.kapacitord import REPO_ROOT, Kapacitord, Json

if TYPE_CHECKING:
    from tests.e2e.conftest import StartKapacitord

pytestmark = pytest.mark.e2e

TICK_FILES = sorted((REPO_ROOT / "tick").glob("*.tick"))


def is_batch(path: Path) -> bool:
    """A batch script (``batch|query()``) reads InfluxDB: test_influxdb_e2e.py runs those."""
    code = "\n".join(ln.split("//", 1)[0] for ln in path.read_text(encoding="utf-8").splitlines())
    return re.search(r"(?m)^\s*(?:var\s+\w+\s*=\s*)?batch\b", code) is not None


STREAM_TICK_FILES = [p for p in TICK_FILES if not is_batch(p)]
ALERT_FIELDS = (
    "alert_changed",
    "alert_count",
    "alert_duration",
    "alert_flapping",
    "alert_level",
    "alert_level_code",
    "alert_pending",
    "alert_previous_level",
)
T0 = 1714564800  # 2024-05-01T12:00:00Z, a whole minute, so window boundaries are predictable
STEP = 5  # seconds of data time between points

#: host=a: baseline, then 14 points above crit (70 s, more than any for(1m)), then recovery.
#: host=b stays low the whole time: its state must never be touched by host=a's spike.
SPIKE = [50.0, 55.0, 60.0] + [95.0] * 14
RECOVERY = [40.0] * 4
QUIET = 20.0


def _iso(offset: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + offset))


def _lines(values: list[float], first_index: int) -> list[str]:
    out = []
    for i, v in enumerate(values, start=first_index):
        t = T0 + STEP * i
        out.append(f"cpu,host=a,cpu=cpu-total usage_user={v},usage_system=1.5 {t}")
        out.append(f"cpu,host=b,cpu=cpu-total usage_user={QUIET},usage_system=1.5 {t}")
    return out


# --------------------------------------------------------------------------------------------
# reading a task's output
# --------------------------------------------------------------------------------------------


def rows_by_host(body: Json) -> dict[str, list[dict[str, Any]]]:
    """httpOut body -> host -> rows as dicts (a stream series has one row, a batch several)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for series in body.get("series") or []:
        cols = series["columns"]
        out[series["tags"]["host"]] = [dict(zip(cols, values)) for values in series["values"]]
    return out


def node_stats(task: Json) -> dict[str, Json]:
    stats: dict[str, Json] = task["stats"]["node-stats"]
    return stats


def alert_nodes(task: Json) -> dict[str, Json]:
    return {name: s for name, s in node_stats(task).items() if re.fullmatch(r"alert\d+", name)}


@dataclass
class Script:
    """One tick file as the test runs it: task id, dbrp, and its output nodes."""

    path: Path
    text: str
    task_id: str
    db: str
    rp: str
    declares_dbrp: bool
    http_outs: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "Script":
        text = path.read_text(encoding="utf-8")
        declared = re.search(r'^\s*dbrp\s+"([^"]+)"\."([^"]+)"', text, re.M)
        documented = re.search(r"-dbrp\s+([\w-]+)\.([\w-]+)", text)
        if declared:
            db, rp = declared.groups()
        elif documented:
            db, rp = documented.groups()
        else:
            db, rp = "telegraf", "autogen"
        code = "\n".join(ln.split("//", 1)[0] for ln in text.splitlines())
        return cls(
            path=path,
            text=text,
            task_id=path.stem,
            db=db,
            rp=rp,
            declares_dbrp=bool(declared),
            http_outs=re.findall(r"\|httpOut\('([^']+)'\)", code),
        )


# --------------------------------------------------------------------------------------------
# expectations
# --------------------------------------------------------------------------------------------

Check = Callable[[Kapacitord, Script], bool]


def generic_problem(k: Kapacitord, s: Script) -> bool:
    """Spike seen: annotated host=a output holds a problem level; every alert node fired CRITICAL."""
    ok = True
    for name in s.http_outs:
        rows = rows_by_host(k.http_out(s.task_id, name))
        if name == "annotated":
            ok &= any(r.get("alert_level") not in (None, "OK") for r in rows.get("a", []))
        else:
            ok &= bool(rows)
    ok &= all(n["crits_triggered"] >= 1 for n in alert_nodes(k.task(s.task_id)).values())
    return ok


def generic_recovered(k: Kapacitord, s: Script) -> bool:
    """Recovery seen: host=a back at OK after CRITICAL; every alert node sent a recovery."""
    ok = True
    for name in s.http_outs:
        if name == "annotated":
            rows = rows_by_host(k.http_out(s.task_id, name)).get("a", [])
            ok &= bool(rows) and rows[-1].get("alert_level") == "OK"
            ok &= bool(rows) and rows[-1].get("alert_previous_level") == "CRITICAL"
    ok &= all(n["oks_triggered"] >= 1 for n in alert_nodes(k.task(s.task_id)).values())
    return ok


def _state(level: str, previous: str, changed: bool, count: int, duration: float, pending: str = "") -> Json:
    code = {"OK": 0, "INFO": 1, "WARNING": 2, "CRITICAL": 3}[level]
    return {
        "alert_level": level,
        "alert_level_code": code,
        "alert_previous_level": previous,
        "alert_changed": changed,
        "alert_count": count,
        "alert_duration": duration,
        "alert_pending": pending,
        "alert_flapping": False,
    }


def _annotated(rows: list[dict[str, Any]]) -> list[Json]:
    return [{"time": r["time"], "usage_user": r["usage_user"], **{f: r.get(f) for f in ALERT_FIELDS}} for r in rows]


def _expect_rows(expected: dict[str, list[Json]]) -> Check:
    def check(k: Kapacitord, s: Script) -> bool:
        rows = rows_by_host(k.http_out(s.task_id, "annotated"))
        return {h: _annotated(r) for h, r in rows.items()} == expected

    return check


def _expect_alerts(crits: int, oks: int, warns: int = 0) -> Check:
    def check(k: Kapacitord, s: Script) -> bool:
        nodes = alert_nodes(k.task(s.task_id))
        return bool(nodes) and all(
            (n["crits_triggered"], n["oks_triggered"], n["warns_triggered"]) == (crits, oks, warns)
            for n in nodes.values()
        )

    return check


def _all(*checks: Check) -> Check:
    return lambda k, s: all(c(k, s) for c in checks)


N_SPIKE = len(SPIKE)
N_ALL = len(SPIKE) + len(RECOVERY)

#: file name -> (after the spike, after the recovery): exact outcomes of the shipped scripts.
EXPECTED: dict[str, tuple[Check, Check]] = {
    # Plain alert node with stateChangesOnly: one CRITICAL event, one recovery, nothing else.
    "cpu_alert.tick": (_expect_alerts(crits=1, oks=0), _expect_alerts(crits=1, oks=1)),
    # for(1m): the first 95 is at offset 15 s, CRITICAL is entered at 75 s (pending until then),
    # the last spike point (80 s) is CRITICAL for 5 s; the recovery enters OK at once.
    "cpu_alert_state.tick": (
        _all(
            _expect_rows({
                "a": [{"time": _iso(80), "usage_user": 95, **_state("CRITICAL", "OK", False, 2, 5)}],
                "b": [{"time": _iso(80), "usage_user": QUIET, **_state("OK", "OK", False, N_SPIKE, 80)}],
            }),
            _expect_alerts(crits=1, oks=0),
        ),
        _all(
            _expect_rows({
                "a": [{"time": _iso(STEP * (N_ALL - 1)), "usage_user": 40, **_state("OK", "CRITICAL", False, 4, 15)}],
                "b": [{"time": _iso(STEP * (N_ALL - 1)), "usage_user": QUIET, **_state("OK", "OK", False, N_ALL, STEP * (N_ALL - 1))}],
            }),
            _expect_alerts(crits=1, oks=1),
        ),
    ),
}


def _wait(k: Kapacitord, s: Script, check: Check, what: str) -> None:
    k.wait_for(
        lambda: k.task(s.task_id),
        lambda _task: check(k, s),
        timeout=15.0,
        what=f"{s.path.name}: {what}",
    )


def _assert_healthy(k: Kapacitord, s: Script) -> Json:
    task = k.task(s.task_id)
    assert (task["status"], task["executing"], task["error"]) == ("enabled", True, ""), task
    errors = {name: st["errors"] for name, st in node_stats(task).items() if st["errors"]}
    assert errors == {}, f"nodes reported errors: {errors}\n{k.log_tail()}"
    return task


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


def test_tick_dir_is_covered() -> None:
    """The glob finds the shipped scripts, and every exact expectation names a stream script."""
    names = {p.name for p in TICK_FILES}
    assert names >= {"cpu_alert.tick", "cpu_alert_state.tick", "cpu_alert_state_batch.tick"}
    assert {p.name for p in TICK_FILES if is_batch(p)} == {"cpu_alert_state_batch.tick"}
    assert set(EXPECTED) <= {p.name for p in STREAM_TICK_FILES}


@pytest.mark.parametrize("path", STREAM_TICK_FILES, ids=lambda p: p.name)
def test_tick_script_runs_in_kapacitord(path: Path, start_kapacitord: "StartKapacitord") -> None:
    """The script defines, enables, executes without error, and reacts to a spike and its recovery."""
    s = Script.load(path)
    k = start_kapacitord()

    k.define_task(s.task_id, s.text, dbrps=() if s.declares_dbrp else [(s.db, s.rp)])
    task = k.wait_task(s.task_id, lambda t: bool(t["executing"]) or bool(t["error"]))
    # UDF Init runs in a goroutine after enable returned: give a failing Init time to show.
    time.sleep(0.3)
    task = _assert_healthy(k, s)
    assert task["type"] == "stream"
    for name in s.http_outs:
        assert k.http_out(s.task_id, name) == {"series": None}

    problem, recovered = EXPECTED.get(path.name, (generic_problem, generic_recovered))

    k.write(s.db, s.rp, _lines(SPIKE, 0))
    _wait(k, s, problem, "after the spike")
    _assert_healthy(k, s)

    k.write(s.db, s.rp, _lines(RECOVERY, len(SPIKE)))
    _wait(k, s, recovered, "after the recovery")
    task = _assert_healthy(k, s)
    stream_stats = node_stats(task)["stream0"]
    assert stream_stats["collected"] == 2 * N_ALL

    # The generic checks hold for the shipped scripts too (they are what a new script gets).
    assert generic_recovered(k, s)
