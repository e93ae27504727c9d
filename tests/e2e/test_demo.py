"""``python -m demo`` (what ``make demo`` runs) tells the whole story and leaves nothing behind."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.kapacitord import REPO_ROOT

pytestmark = pytest.mark.e2e


def group_members(pgid: int) -> list[str]:
    """Command lines of live processes in process group ``pgid`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def wait_group_empty(pgid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        assert time.monotonic() < deadline, f"left running: {group_members(pgid)}"
        time.sleep(0.05)


def spawn() -> subprocess.Popen[str]:
    """The demo in its own session, like a shell job: its pid is the group every child inherits."""
    return subprocess.Popen(
        [sys.executable, "-m", "demo"],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def work_dir(output: str) -> Path:
    m = re.search(r"work dir (\S+)", output)
    assert m, output
    return Path(m.group(1))


def test_demo_shows_incident_opened_and_resolved() -> None:
    """Exit 0 within 30 s; the timeline goes point -> alert state -> bridge -> incident opened/resolved."""
    started = time.monotonic()
    proc = spawn()
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, out
    assert elapsed < 30 or "first run compiles" in out, f"took {elapsed:.1f}s"

    def at(pattern: str) -> int:
        m = re.search(pattern, out, re.M)
        assert m, f"missing {pattern!r} in:\n{out}"
        return m.start()

    # The blip is swallowed by for(1m), the spike pages once, critReset holds, the recovery resolves.
    order = [
        at(r"12:01:00\s+93\.0 %\s+OK, pending CRITICAL"),
        at(r"12:01:30\s+38\.0 %\s+OK\s+dropped before for\(1m\) ended"),
        at(r"12:03:30\s+96\.0 %\s+CRITICAL \(was OK\)"),
        at(r"bridge\s+accepted CRITICAL cpu:host=web-1"),
        at(r"on-call\s+INCIDENT OPENED\s+cpu:host=web-1\s+CRITICAL"),
        at(r"12:04:00\s+86\.0 %\s+CRITICAL\s+below crit but not below critReset"),
        at(r"12:04:30\s+35\.0 %\s+OK \(was CRITICAL\)"),
        at(r"bridge\s+accepted OK cpu:host=web-1"),
        at(r"on-call\s+INCIDENT RESOLVED\s+cpu:host=web-1\s+after 1m00s"),
        at(r"Result: 1 incident opened, 1 resolved; the bridge accepted 2 events and delivered 2\."),
        at(r"removed the work dir"),
    ]
    assert order == sorted(order), out
    assert out.count("INCIDENT OPENED") == 1 and out.count("INCIDENT RESOLVED") == 1, out
    assert re.search(r"outbox\s+oncall\s+0\s+0\s+2\s+0\s+0", out), out
    wait_group_empty(proc.pid)
    assert not work_dir(out).exists()


def test_ctrl_c_stops_everything() -> None:
    """Ctrl-C (SIGINT to the whole job) mid-run: exit 130, no kapacitord/bridge/UDF left, temp dir gone."""
    proc = spawn()
    lines: "queue.Queue[str]" = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None

    def read() -> None:
        for ln in stdout:
            lines.put(ln)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any(re.search(r"kapacitord\s+http://", ln) for ln in seen):
            assert proc.poll() is None, "".join(seen)
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        # Everything is up now: kapacitord (with its UDF child soon), the bridge, the receiver.
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5)
    stdout.close()
    while not lines.empty():
        seen.append(lines.get())
    out = "".join(seen)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "removed the work dir" in out, out
    wait_group_empty(proc.pid)
    assert not work_dir(out).exists()
