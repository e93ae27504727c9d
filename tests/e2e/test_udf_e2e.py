"""The alert-state UDF driven by a real kapacitord: fields, errors, crashes, restarts, socket mode.

Every scenario runs the shipped ``tick/cpu_alert_state.tick`` (warn 70, crit 90, critReset 80,
for 1m), changed only where a test needs a wrong option or an extra output node. Points carry
data time, so a minute of ``for()`` takes no wall time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pytest

from tests.e2e.kapacitord import EXAMPLE_CONFIG, REPO_ROOT, Kapacitord, KapacitordError, Json
from udf.state import SNAPSHOT_MAGIC, SnapshotError, decode_snapshot

if TYPE_CHECKING:
    from tests.e2e.conftest import StartKapacitord

pytestmark = pytest.mark.e2e

TICK = REPO_ROOT / "tick" / "cpu_alert_state.tick"
TASK = "cpu_alert_state"
DBRP = ("telegraf", "autogen")
T0_MS = 1714564800_000  # 2024-05-01T12:00:00Z

#: Appended to the real script: lambdas that only type-check when every alert_* field has its
#: documented type (int + float, a string + '' or a non-bool OR is an evaluation error in
#: Kapacitor, and the point is then dropped instead of reaching httpOut('typed')).
TYPED_PROBE = """
annotated
    |eval(
        lambda: "alert_level" + '',
        lambda: "alert_level_code" + 1,
        lambda: "alert_previous_level" + '',
        lambda: "alert_changed" OR FALSE,
        lambda: "alert_duration" + 0.5,
        lambda: "alert_count" + 1,
        lambda: "alert_pending" + '',
        lambda: "alert_flapping" OR FALSE,
    )
        .as('level_s', 'code_plus_1', 'previous_s', 'changed_b', 'duration_plus_half', 'count_plus_1', 'pending_s', 'flapping_b')
    |httpOut('typed')
"""


def tick_text() -> str:
    return TICK.read_text(encoding="utf-8")


def replace_once(text: str, old: str, new: str) -> str:
    """Edit the real script; fail loudly if it no longer contains what the test changes."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {TICK}"
    return text.replace(old, new)


def point(offset_s: float, value: float, host: str = "web-1") -> str:
    t_ms = T0_MS + round(offset_s * 1000)
    return f"cpu,host={host},cpu=cpu-total usage_user={value},usage_system=2.5 {t_ms}"


def iso(offset_s: float) -> str:
    t_ms = T0_MS + round(offset_s * 1000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_ms // 1000))
    frac = t_ms % 1000
    return base + (f".{frac:03d}".rstrip("0") if frac else "") + "Z"


def last_row(body: Json, host: str = "web-1") -> Optional[dict[str, Any]]:
    for series in body.get("series") or []:
        if series["tags"].get("host") == host:
            return dict(zip(series["columns"], series["values"][-1]))
    return None


def write_and_read(k: Kapacitord, offset_s: float, value: float, node: str = "annotated") -> dict[str, Any]:
    """Write one point and return the row it produced once httpOut shows it."""
    k.write(*DBRP, point(offset_s, value), precision="ms")
    body = k.wait_http_out(TASK, node, lambda b: (last_row(b) or {}).get("time") == iso(offset_s))
    row = last_row(body)
    assert row is not None
    return row


def state(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["alert_level"],
        row["alert_level_code"],
        row["alert_previous_level"],
        row["alert_changed"],
        row["alert_count"],
        row["alert_duration"],
        row["alert_pending"],
        row["alert_flapping"],
    )


def node(task: Json, pattern: str) -> Json:
    """The stats of the one node whose name matches ``pattern`` (e.g. ``alert\\d+``)."""
    (stats,) = [s for n, s in task["stats"]["node-stats"].items() if re.fullmatch(pattern, n)]
    return dict(stats)


def triggered(alert: Json) -> int:
    """How many events an alert node has raised, at any level."""
    return int(alert["infos_triggered"] + alert["warns_triggered"] + alert["crits_triggered"] + alert["oks_triggered"])


def start_task(k: Kapacitord, script: Optional[str] = None) -> None:
    k.define_task(TASK, script if script is not None else tick_text(), dbrps=[DBRP])
    k.wait_task(TASK, lambda t: bool(t["executing"]))


# --------------------------------------------------------------------------------------------
# (a) the documented fields, with their types and values, through a whole spike
# --------------------------------------------------------------------------------------------

#: (offset s, usage_user) -> (level, code, previous, changed, count, duration s, pending, flapping)
SPIKE = [
    ((0, 50.0), ("OK", 0, "OK", False, 1, 0, "", False)),  # a first point at OK is no change
    ((30, 75.0), ("OK", 0, "OK", False, 2, 30, "WARNING", False)),  # above warn: for(1m) starts
    ((60, 78.0), ("OK", 0, "OK", False, 3, 60, "WARNING", False)),
    ((90, 80.0), ("WARNING", 2, "OK", True, 1, 0, "", False)),  # 60 s above warn: entered
    ((120, 95.0), ("WARNING", 2, "OK", False, 2, 30, "CRITICAL", False)),
    ((150, 96.0), ("WARNING", 2, "OK", False, 3, 60, "CRITICAL", False)),
    ((180.5, 97.0), ("CRITICAL", 3, "WARNING", True, 1, 0, "", False)),  # 60.5 s above crit
    ((210, 85.0), ("CRITICAL", 3, "WARNING", False, 2, 29.5, "", False)),  # critReset 80 holds
    ((240, 82.0), ("CRITICAL", 3, "WARNING", False, 3, 59.5, "", False)),
    ((270, 75.0), ("WARNING", 2, "CRITICAL", True, 1, 0, "", False)),  # below 80: released
    ((300, 40.0), ("OK", 0, "WARNING", True, 1, 0, "", False)),  # no recoverFor: at once
    ((330.25, 40.0), ("OK", 0, "WARNING", False, 2, 30.25, "", False)),
]


class TestAnnotatedFields:
    def test_spike_annotations_read_via_http_out(self, kapacitord: Kapacitord) -> None:
        """Every documented alert_* field has its type and value on every point of a spike."""
        start_task(kapacitord, tick_text() + TYPED_PROBE)
        for (offset, value), expected in SPIKE:
            row = write_and_read(kapacitord, offset, value)
            assert state(row) == expected, f"point at +{offset}s = {value}"
            # Everything else passes untouched.
            assert (row["usage_user"], row["usage_system"]) == (value, 2.5)
            typed = last_row(kapacitord.wait_http_out(
                TASK, "typed", lambda b: (last_row(b) or {}).get("time") == iso(offset)
            ))
            assert typed is not None
            level, code, previous, changed, count, duration, pending, flapping = expected
            assert (
                typed["level_s"], typed["code_plus_1"], typed["previous_s"], typed["changed_b"],
                typed["duration_plus_half"], typed["count_plus_1"], typed["pending_s"], typed["flapping_b"],
            ) == (level, code + 1, previous, changed, duration + 0.5, count + 1, pending, flapping)

        body = kapacitord.http_out(TASK, "annotated")
        (series,) = body["series"]
        assert series["name"] == "cpu"
        assert series["tags"] == {"host": "web-1", "cpu": "cpu-total"}
        # The alert node is a sibling branch of httpOut and may lag it (CI saw it three changes
        # behind), so wait until it has triggered four times before reading its counters.
        task = kapacitord.wait_task(TASK, lambda t: triggered(node(t, r"alert\d+")) >= 4)
        stats = task["stats"]["node-stats"]
        assert {n: s["errors"] for n, s in stats.items() if s["errors"]} == {}
        # Only the four changes reach the alert node: WARNING, CRITICAL, WARNING, OK.
        alert = node(task, r"alert\d+")
        assert (alert["warns_triggered"], alert["crits_triggered"], alert["oks_triggered"]) == (2, 1, 1)


# --------------------------------------------------------------------------------------------
# (c) wrong options name themselves
# --------------------------------------------------------------------------------------------


class TestWrongOptions:
    @pytest.mark.parametrize(
        ("old", "new", "message"),
        [
            (".crit(90.0)", ".crit('x')", r"unexpected arg to crit, got STRING expected DOUBLE"),
            (".crit(90.0)", ".crit(90)", r"unexpected arg to crit, got INT expected DOUBLE"),
            (".for(1m)", ".for(1m)\n        .bogus(1.0)", r'no method or property "bogus" on \*pipeline\.UDFNode'),
        ],
        ids=["crit-string", "crit-int", "unknown-option"],
    )
    def test_rejected_at_define(self, kapacitord: Kapacitord, old: str, new: str, message: str) -> None:
        """Names, arity and types are checked against the UDF's Info when the task is defined (400)."""
        script = replace_once(tick_text(), old, new)
        r = kapacitord.session.post(
            kapacitord.api("/tasks"),
            json={"id": TASK, "script": script, "dbrps": [{"db": DBRP[0], "rp": DBRP[1]}], "status": "enabled"},
            timeout=10,
        )
        assert r.status_code == 400, r.text
        assert re.fullmatch(r"invalid TICKscript: line \d+ char \d+: " + message, r.json()["error"]), r.json()
        assert kapacitord.session.get(kapacitord.api(f"/tasks/{TASK}"), timeout=10).status_code == 404

    @pytest.mark.parametrize(
        ("old", "new", "option"),
        [
            ("        .field('usage_user')\n", "", "field"),
            (".warn(70.0)", ".warn(95.0)", "warn"),
        ],
        ids=["missing-field", "warn-above-crit"],
    )
    def test_rejected_at_enable(self, kapacitord: Kapacitord, old: str, new: str, option: str) -> None:
        """Meaning is checked by the UDF's Init: the task stops with an error naming the option."""
        script = replace_once(tick_text(), old, new)
        kapacitord.define_task(TASK, script, dbrps=[DBRP])  # accepted: types are fine
        task = kapacitord.wait_task(TASK, lambda t: bool(t["error"]))
        assert task["executing"] is False
        assert task["status"] == "enabled"  # Kapacitor keeps the wish; the error explains
        assert re.fullmatch(
            rf"alertState\d+: failed to initialize processes @alertState\(\): {option}: .+", task["error"]
        ), task["error"]
        # Recovery: fix the script, then disable + enable. kapacitord (1.5.9 and 1.8.6) neither
        # restarts an enabled task on a script update nor acts on enabling an "enabled" (failed)
        # task.
        kapacitord.update_task(TASK, script=tick_text())
        assert kapacitord.task(TASK)["executing"] is False
        kapacitord.disable(TASK)
        kapacitord.enable(TASK)
        task = kapacitord.wait_task(TASK, lambda t: bool(t["executing"]))
        assert task["error"] == ""
        assert write_and_read(kapacitord, 0, 10.0)["alert_level"] == "OK"


# --------------------------------------------------------------------------------------------
# (d) a killed UDF does not wedge Kapacitor
# --------------------------------------------------------------------------------------------


def udf_children(parent: int) -> list[int]:
    """Pids of ``parent``'s children whose command line runs udf.alert_state (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"udf.alert_state" in cmdline:
            pids.append(int(entry.name))
    return pids


def is_dead(pid: int) -> bool:
    """Gone, or a zombie: kapacitord (1.5.9 and 1.8.6) reaps a dead UDF only when the task stops."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_children(k: Kapacitord, predicate: Any, timeout: float = 10.0) -> list[int]:
    assert k.pid is not None
    deadline = time.monotonic() + timeout
    while True:
        pids = udf_children(k.pid)
        if predicate(pids):
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"UDF children of kapacitord: {pids}\n{k.log_tail()}")
        time.sleep(0.05)


class TestKilledUdf:
    def test_sigkill_reports_error_and_reenable_recovers(self, kapacitord: Kapacitord) -> None:
        """SIGKILL of the UDF child stops only its task, with an error; disable+enable brings it back."""
        k = kapacitord
        start_task(k)
        k.define_task("plain", "stream\n    |from()\n        .measurement('cpu')\n    |httpOut('out')\n", dbrps=[DBRP])
        assert write_and_read(k, 0, 50.0)["alert_count"] == 1
        (pid,) = wait_children(k, lambda p: len(p) == 1)

        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not is_dead(pid):
            assert time.monotonic() < deadline, "SIGKILLed UDF still running"
            time.sleep(0.01)
        # kapacitord (1.5.9 and 1.8.6) notices a dead stdio UDF only when it next writes to it (a
        # point or a snapshot request fails with EPIPE) and the node's input loop then receives
        # one more point. Until then the task reads executing=true, error="" - even after the keepalive
        # watchdog logged "keepalive timedout" and "killing process". So keep data flowing.
        # (The task leaves the executing set a moment before its error is recorded: wait for both.)
        stopped: Any = lambda t: not t["executing"] and bool(t["error"])
        task = k.task(TASK)
        for n in range(1, 11):
            k.write(*DBRP, point(n, 60.0), precision="ms")
            try:
                task = k.wait_task(TASK, stopped, timeout=0.5)
                break
            except KapacitordError:
                continue
        assert task["executing"] is False, f"still executing after {n} points:\n{k.log_tail()}"
        assert n <= 3, n
        assert task["status"] == "enabled"
        assert re.fullmatch(
            r"alertState2: (write error: write \|1: broken pipe|process exited unexpectedly: signal: killed)",
            task["error"],
        ), task["error"]

        # Kapacitor itself is fine: the API answers and other tasks still get every point.
        assert k.session.get(k.api("/ping"), timeout=5).status_code == 204
        k.write(*DBRP, point(20, 60.0), precision="ms")
        k.wait_http_out("plain", "out", lambda b: (last_row(b) or {}).get("time") == iso(20))
        assert k.task("plain")["executing"] is True
        assert k.task("plain")["stats"]["node-stats"]["stream0"]["collected"] == n + 2

        k.disable(TASK)
        k.wait_task(TASK, lambda t: t["status"] == "disabled" and not t["executing"])
        k.enable(TASK)
        task = k.wait_task(TASK, lambda t: bool(t["executing"]))
        assert task["error"] == ""
        (new_pid,) = wait_children(k, lambda p: len(p) == 1)
        assert new_pid != pid
        row = write_and_read(k, 30, 55.0)
        assert (row["alert_level"], row["alert_changed"]) == ("OK", False)


# --------------------------------------------------------------------------------------------
# (e) state survives a kapacitord restart through Kapacitor's snapshot
# --------------------------------------------------------------------------------------------


def boltdb_path(k: Kapacitord) -> Path:
    """The ``[storage] boltdb`` file of this kapacitord (rendered into its workdir)."""
    text = k.config.read_text(encoding="utf-8")
    m = re.search(r'^\[storage\]\s*\n(?:\s*#.*\n)*\s*boltdb\s*=\s*"([^"]+)"', text, re.M)
    assert m, f"no [storage] boltdb in {k.config}"
    return Path(m.group(1))


def stored_snapshots(db: Path) -> list[dict[str, int]]:
    """Every alert-state snapshot found in kapacitord's BoltDB file: group -> last point time (ns).

    Kapacitor stores a task's snapshot as a gob-encoded ``map[string][]byte``; gob writes a
    byte slice as its length (one byte when < 128) followed by the bytes verbatim, so the UDF's
    snapshot (magic ``KOAS``) can be cut out of the file and decoded by the UDF's own codec.
    Bolt may keep superseded copies in free pages: callers look for the state they expect.
    """
    data = db.read_bytes()
    found: list[dict[str, int]] = []
    pos = data.find(SNAPSHOT_MAGIC, 1)
    while pos > 0:
        size = data[pos - 1]
        if size < 0x80:
            try:
                snap = decode_snapshot(data[pos : pos + size])
            except SnapshotError:
                pass
            else:
                found.append({group: st.last_ns for group, st in snap.states.items()})
        pos = data.find(SNAPSHOT_MAGIC, pos + 1)
    return found


def wait_for_snapshot(k: Kapacitord, predicate: Callable[[dict[str, int]], bool], timeout: float = 15.0) -> None:
    """Poll the BoltDB file until a stored alert-state snapshot satisfies ``predicate``."""
    db = boltdb_path(k)
    deadline = time.monotonic() + timeout
    while not any(predicate(s) for s in stored_snapshots(db)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching snapshot in {db} after {timeout}s: {stored_snapshots(db)}")
        time.sleep(0.1)


class TestSnapshotRestore:
    def test_restart_continues_duration_and_count(self, kapacitord: Kapacitord) -> None:
        """After a restart the restored state keeps counting: same level, duration, count + 1."""
        k = kapacitord
        start_task(k)
        write_and_read(k, 0, 95.0)
        write_and_read(k, 30, 96.0)
        assert state(write_and_read(k, 60, 97.0))[:5] == ("CRITICAL", 3, "OK", True, 1)
        before = write_and_read(k, 90, 98.0)
        assert state(before) == ("CRITICAL", 3, "OK", False, 2, 30, "", False)
        # Kapacitor takes no snapshot at shutdown: wait until one that saw the last point is in
        # BoltDB (snapshot-interval is 1s here).
        wait_for_snapshot(k, lambda st: (T0_MS + 90_000) * 1_000_000 in st.values())

        k.restart()
        k.wait_task(TASK, lambda t: bool(t["executing"]))
        # 85 is below crit: without the restored state this would be a first point (OK, pending).
        after = write_and_read(k, 120, 85.0)
        assert state(after) == ("CRITICAL", 3, "OK", False, 3, 60, "", False)
        assert "alert_state.restored" in k.log_text()


# --------------------------------------------------------------------------------------------
# socket mode
# --------------------------------------------------------------------------------------------


SOCKET_UNIT = REPO_ROOT / "deploy" / "kapacitor-alert-state.service"


def example_socket_path() -> str:
    m = re.search(r'^\s*#\s+socket = "([^"]+)"', EXAMPLE_CONFIG.read_text(encoding="utf-8"), re.M)
    assert m, "kapacitor.conf.example lost its commented socket-mode example"
    return m.group(1)


def socket_table(path: str) -> str:
    """The example config's commented socket-mode table, uncommented, with our socket path."""
    lines = EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if re.fullmatch(r"\s*#\s*\[udf\.functions\.alertState\]\s*", ln))
    table = [lines[start].replace("#", "", 1).strip()]
    for ln in lines[start + 1:]:
        m = re.fullmatch(r"\s*#\s+([a-z_-]+\s*=.*)", ln)
        if m is None:
            break
        table.append("  " + m.group(1))
    text = "\n".join(table)
    assert re.search(r'^\s*socket = ".*"$', text, re.M) and "timeout" in text, text
    return re.sub(r'^(\s*socket = ).*$', lambda m: m.group(1) + f'"{path}"', text, flags=re.M)


@pytest.fixture
def udf_socket() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m udf.alert_state --socket PATH``, started before kapacitord as Kapacitor requires."""
    # A short dir: unix socket paths are limited to ~107 bytes, pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="kos-")
    path = os.path.join(d, "alert-state.sock")
    log = open(os.path.join(d, "udf.log"), "wb")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "udf.alert_state", "--socket", path],
        cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert proc.poll() is None, Path(d, "udf.log").read_text()
            assert time.monotonic() < deadline, "socket server did not listen"
            time.sleep(0.02)
        yield path, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        for name in ("alert-state.sock", "udf.log"):
            try:
                os.unlink(os.path.join(d, name))
            except FileNotFoundError:
                pass
        os.rmdir(d)


class TestSocketMode:
    def test_systemd_unit_serves_the_configured_socket(self) -> None:
        """deploy/'s unit runs the console script on the socket the example config names, before Kapacitor."""
        unit = SOCKET_UNIT.read_text(encoding="utf-8")
        (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, re.M)
        prog, *args = exec_start.split()
        assert Path(prog).name == "kapacitor-alert-state"
        assert args == ["--socket", example_socket_path()]
        assert re.search(r"^Before=.*\bkapacitor\.service\b", unit, re.M)
        assert f"RuntimeDirectory={Path(example_socket_path()).parent.name}" in unit

    def test_task_annotates_through_socket_server(
        self, udf_socket: tuple[str, subprocess.Popen[bytes]], start_kapacitord: "StartKapacitord"
    ) -> None:
        """With ``socket = ...`` Kapacitor spawns nothing and the long-running server annotates."""
        path, server = udf_socket
        k = start_kapacitord(udf_prog=None, extra=socket_table(path))
        try:
            start_task(k)
            row = write_and_read(k, 0, 95.0)
            assert state(row) == ("OK", 0, "OK", False, 1, 0, "CRITICAL", False)
            row = write_and_read(k, 60, 95.0)
            assert state(row) == ("CRITICAL", 3, "OK", True, 1, 0, "", False)
            assert k.pid is not None and udf_children(k.pid) == []
            # A second task is a second connection with its own state.
            k.define_task("second", replace_once(tick_text(), ".for(1m)", ".for(0s)"), dbrps=[DBRP])
            k.wait_task("second", lambda t: bool(t["executing"]))
            k.write(*DBRP, point(61, 95.0), precision="ms")
            body = k.wait_http_out("second", "annotated", lambda b: last_row(b) is not None)
            assert state(last_row(body) or {})[:5] == ("CRITICAL", 3, "OK", True, 1)
            assert k.task(TASK)["error"] == ""
        finally:
            k.stop()  # Kapacitor half-closes its connections; then the server may go
        server.terminate()
        assert server.wait(10) == 0
        assert not os.path.exists(path), "the server removes its socket on SIGTERM"
