"""``python -m demo`` (``make demo``): the whole kapacitor-oncall flow, every hop real, on loopback.

What runs, all in a fresh temp dir on free ports, all stopped on exit, error or Ctrl-C:

* **kapacitord 1.8.6** (built once by ``scripts/kapacitor-build``, its default version) with ``kapacitor.conf.example``
  rendered for this machine: the ``@alertState()`` UDF as a child process, and the
  ``[[httppost]] oncall-bridge`` endpoint pointing at the bridge with its bearer token;
* **the bridge**, ``kapacitor-oncall-bridge serve`` with a generated minimal config (SQLite
  outbox in the temp dir, a token, one ``webhook`` target pointing at the receiver);
* **an "on-call" receiver**, a thread of this process, that prints incidents as they open
  and resolve.

The shipped ``tick/cpu_alert_state.tick`` runs unchanged. Its ``for(1m)`` is measured in
*data* time (the points' timestamps), so writing points 30 s apart in data time walks through
minutes of alerting in a fraction of a second. The timeline printed is: point → alert state
(read back from the task's ``httpOut('annotated')``) → bridge (its JSON log) → incident.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import IO, Any, Callable, Optional

import requests

from tests.e2e.kapacitord import (
    DEFAULT_VERSION,
    REPO_ROOT,
    Kapacitord,
    KapacitordError,
    ensure_built,
    free_port,
    render_config,
)

__all__ = ["SERIES", "main"]

TICK = REPO_ROOT / "tick" / "cpu_alert_state.tick"
TASK = "cpu_alert_state"
DB, RP = "telegraf", "autogen"
HOST = "web-1"
ALERT_ID = f"cpu:host={HOST}"  # the script's .id('{{ .Name }}:{{ .Group }}')
TARGET = "oncall"  # the example config posts to /alerts/oncall
T0 = 1714564800  # 2024-05-01T12:00:00Z: data time of the first point

#: (seconds after T0, usage_user %): a short blip that for(1m) swallows, a real spike that
#: pages, a dip that critReset holds at CRITICAL, and the recovery that resolves the incident.
SERIES: list[tuple[int, float]] = [
    (0, 31.0),
    (30, 34.0),
    (60, 93.0),
    (90, 38.0),
    (120, 42.0),
    (150, 95.0),
    (180, 97.0),
    (210, 96.0),
    (240, 86.0),
    (270, 35.0),
    (300, 33.0),
]

WAIT = 15.0  # seconds to wait for any one hop before calling the demo failed

#: How to stop what run() started, newest last; main() unwinds it on any exit.
stack: list[Callable[[], Any]] = []


class DemoError(RuntimeError):
    """A hop did not do what the demo expects; the message says which."""


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


class Timeline:
    """Lines prefixed with wall seconds since start; safe from any thread.

    Hops (bridge, on-call) come from two sources with different delays: the receiver sees a
    request at once, the bridge's log line reaches us through a file. So hops are queued with
    the time they really happened and printed in that order by :meth:`flush`.
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.t0 = time.time()
        self.lock = threading.Lock()
        self.hops: list[tuple[float, int, str]] = []

    def line(self, text: str = "", *, stamp: bool = True, at: Optional[float] = None) -> None:
        when = time.time() if at is None else at
        prefix = f"{when - self.t0:6.2f}s  " if stamp else " " * 9
        with self.lock:
            self.out.write((prefix + text).rstrip() + "\n")
            self.out.flush()

    def hop(self, who: str, text: str, at: float) -> None:
        with self.lock:
            self.hops.append((at, len(self.hops), f"{'':>8}  {'':>10}  {who:<9} {text}"))

    def flush(self) -> None:
        with self.lock:
            hops, self.hops = sorted(self.hops), []
        for at, _, text in hops:
            self.line(text, at=at)


def _clock(offset: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(T0 + offset))


def _human(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# --------------------------------------------------------------------------------------------
# the on-call receiver (in-process)
# --------------------------------------------------------------------------------------------


@dataclass
class Incident:
    id: str
    level: str
    opened_at: str
    message: str
    resolved_at: Optional[str] = None


@dataclass
class OnCall:
    """A tiny on-call platform: POST /oncall with Kapacitor's alert JSON; level OK resolves."""

    timeline: Timeline
    incidents: dict[str, Incident] = field(default_factory=dict)
    history: list[tuple[str, str]] = field(default_factory=list)  # (id, "opened"|"updated"|"resolved")
    cond: threading.Condition = field(default_factory=threading.Condition)
    server: Optional[ThreadingHTTPServer] = None

    def start(self) -> "OnCall":
        oncall = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                status, answer = oncall.receive(self.path, self.rfile.read(length))
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/oncall"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def receive(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if path != "/oncall":
            return 404, {"error": f"no such endpoint {path}"}
        try:
            event = json.loads(raw)
            alert_id, level, when = event["id"], event["level"], event["time"]
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"error": f"not a Kapacitor alert event: {exc}"}
        now = time.time()
        with self.cond:
            open_incident = self.incidents.get(alert_id)
            if level == "OK":
                if open_incident is not None and open_incident.resolved_at is None:
                    open_incident.resolved_at = when
                    self.history.append((alert_id, "resolved"))
                    lasted = _parse(when) - _parse(open_incident.opened_at)
                    self.timeline.hop(
                        "on-call", f"INCIDENT RESOLVED  {alert_id}  after {_human(lasted)} (data time)", now
                    )
            elif open_incident is None or open_incident.resolved_at is not None:
                self.incidents[alert_id] = Incident(alert_id, level, when, event.get("message", ""))
                self.history.append((alert_id, "opened"))
                self.timeline.hop(
                    "on-call", f"INCIDENT OPENED    {alert_id}  {level}  \"{event.get('message', '')}\"", now
                )
            elif open_incident.level != level:
                open_incident.level = level
                self.history.append((alert_id, "updated"))
                self.timeline.hop("on-call", f"incident updated   {alert_id}  now {level}", now)
            self.cond.notify_all()
        return 200, {"status": "ok"}

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, WAIT):
                raise DemoError(f"the on-call receiver never saw: {what}")


def _parse(rfc3339: str) -> float:
    """Seconds since the epoch of Kapacitor's UTC RFC 3339 time (fractions dropped)."""
    base = rfc3339.rstrip("Z").split(".")[0]
    return float(calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")))


# --------------------------------------------------------------------------------------------
# the bridge (subprocess)
# --------------------------------------------------------------------------------------------


def _bridge_command() -> list[str]:
    script = Path(sys.executable).parent / "kapacitor-oncall-bridge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bridge"]


class Bridge:
    """``kapacitor-oncall-bridge serve`` on a free port; its JSON log lines feed the timeline."""

    def __init__(self, workdir: Path, receiver_url: str, timeline: Timeline) -> None:
        self.workdir = workdir
        self.timeline = timeline
        self.token = secrets.token_urlsafe(24)
        self.port = free_port()
        self.db = workdir / "kapacitor-oncall.db"
        self.config = workdir / "bridge.toml"
        self.config.write_text(
            "# Generated by python -m demo: the smallest useful bridge config.\n"
            "[server]\n"
            f'listen = "127.0.0.1:{self.port}"\n'
            f'token = "{self.token}"\n\n'
            "[store]\n"
            f"path = {json.dumps(str(self.db))}\n\n"
            "[[target]]\n"
            f'name = "{TARGET}"\n'
            'type = "webhook"\n'
            f'url = "{receiver_url}"\n',
            encoding="utf-8",
        )
        self.log_path = workdir / "bridge.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self._tail: Optional[threading.Thread] = None
        self._stop_tail = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Bridge":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*_bridge_command(), "serve", "--config", str(self.config)],
                cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self._tail = threading.Thread(target=self._follow, daemon=True, name="bridge-log")
        self._tail.start()
        deadline = time.monotonic() + WAIT
        with requests.Session() as s:
            while True:
                if self.proc.poll() is not None:
                    raise DemoError(f"the bridge exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if s.get(self.url + "/healthz", timeout=1).status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise DemoError(f"the bridge did not answer /healthz within {WAIT:.0f}s:\n{self.log_tail()}")
                time.sleep(0.05)

    def stop(self) -> Optional[int]:
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # drains: finishes in-flight, keeps the rest queued
            try:
                code = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        self._stop_tail.set()
        if self._tail is not None:
            self._tail.join(2)
        return code

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def _follow(self) -> None:
        with open(self.log_path, "rb") as f:
            buf = b""
            while True:
                chunk = f.readline()
                if chunk:
                    buf += chunk
                    if buf.endswith(b"\n"):
                        self._on_line(buf.decode("utf-8", "replace"))
                        buf = b""
                    continue
                if self._stop_tail.is_set():
                    return
                time.sleep(0.02)

    def _on_line(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        name = str(event.get("event", ""))
        try:
            at = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            at = time.time()
        if name == "alert.accepted":
            self.timeline.hop(
                "bridge",
                f"accepted {event.get('alert_level')} {event.get('id')}: committed to SQLite (seq {event.get('seq')}), 202",
                at,
            )
        elif name == "delivery.ok":
            self.timeline.hop(
                "bridge",
                f"delivered {event.get('alert_level')} {event.get('id')} to target \"{event.get('target')}\": "
                f"HTTP {event.get('status')}, attempt {event.get('attempt')}",
                at,
            )
        elif name.startswith(("alert.", "delivery.")) or event.get("level") in ("warning", "error"):
            detail = {k: v for k, v in event.items() if k not in ("event", "level", "timestamp")}
            self.timeline.hop("bridge", f"{name} {detail}", at)
        else:
            return
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def count(self, name: str) -> int:
        with self.cond:
            return sum(1 for e in self.events if e.get("event") == name)

    def wait_delivered(self, alert_id: str, level: str, timeout: float = 5.0) -> bool:
        """Best effort: the receiver is the source of truth, the log line only completes the story."""
        with self.cond:
            return self.cond.wait_for(
                lambda: any(
                    e.get("event") == "delivery.ok" and e.get("id") == alert_id and e.get("alert_level") == level
                    for e in self.events
                ),
                timeout,
            )

    def queue_table(self) -> str:
        proc = subprocess.run(
            [*_bridge_command(), "queue", "--config", str(self.config)],
            cwd=self.workdir, capture_output=True, text=True, timeout=30, check=False,
        )
        return proc.stdout.strip() if proc.returncode == 0 else f"(queue failed: {proc.stderr.strip()[-300:]})"


# --------------------------------------------------------------------------------------------
# kapacitord
# --------------------------------------------------------------------------------------------


def start_kapacitord(bin_dir: Path, workdir: Path, bridge: Bridge) -> Kapacitord:
    """The example config, rendered: the UDF runs from this checkout, alerts go to the bridge."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    for attempt in range(3):
        port = free_port()
        config = render_config(
            workdir,
            http_port=port,
            udf_prog=[sys.executable, "-m", "udf.alert_state"],
            bridge_url=f"{bridge.url}/alerts/{TARGET}",
            bridge_token=bridge.token,
        )
        k = Kapacitord(bin_dir, config, workdir, http_port=port, env=env, log_level="info")
        stack.append(k.stop)  # before start: an interrupt at any point still stops it
        try:
            return k.start()
        except KapacitordError as exc:
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def annotated_row(k: Kapacitord, offset: int) -> dict[str, Any]:
    """Wait for the annotated point of ``offset`` in the task's httpOut('annotated')."""
    want = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + offset))

    def row(body: dict[str, Any]) -> Optional[dict[str, Any]]:
        for series in body.get("series") or []:
            if series["tags"].get("host") == HOST:
                r = dict(zip(series["columns"], series["values"][-1]))
                return r if r.get("time") == want else None
        return None

    body = k.wait_http_out(TASK, "annotated", lambda b: row(b) is not None, timeout=WAIT)
    found = row(body)
    assert found is not None
    return found


# --------------------------------------------------------------------------------------------
# the story
# --------------------------------------------------------------------------------------------


def _thresholds() -> str:
    """The @alertState() options the explanations rely on, read from the TICKscript itself."""
    text = TICK.read_text(encoding="utf-8")
    udf = text[text.index("@alertState()"):].split("|", 1)[0]
    found: dict[str, str] = {}
    for name, value in re.findall(r"\.(\w+)\(([^)]*)\)", udf):
        found.setdefault(name, value)
    return (
        f"WARNING above {found.get('warn', '?')}, CRITICAL above {found.get('crit', '?')}, a worse level "
        f"must hold for({found.get('for', '?')}), CRITICAL lasts until below {found.get('critReset', '?')}"
    )


def _explain(row: dict[str, Any], prev: Optional[dict[str, Any]], pending_since: Optional[int], offset: int) -> str:
    level, pending, changed = row["alert_level"], row["alert_pending"], row["alert_changed"]
    if changed:
        if level == "OK":
            return "recovered: the alert node posts OK to the bridge"
        return f"changed: the alert node posts {level} to the bridge"
    if pending:
        waited = offset - (pending_since if pending_since is not None else offset)
        if not waited:
            return f"{pending} must hold for(1m) first: waiting, nothing sent"
        return f"{pending} must hold for(1m): {waited}s so far, nothing sent"
    if prev is not None and prev["alert_pending"]:
        return f"dropped before for(1m) ended: no {prev['alert_pending']}, nothing sent"
    if level == "CRITICAL" and row["usage_user"] <= 90.0:
        return "below crit but not below critReset: stays CRITICAL, nothing sent"
    return ""


def run(timeline: Timeline, workdir: Path) -> None:
    """Start everything, feed the series, print the timeline; raises DemoError on a broken hop."""
    say = timeline.line
    say("kapacitor-oncall demo: Kapacitor -> @alertState() UDF -> alert node -> bridge -> on-call")
    say(f"work dir {workdir}")
    say(f"checking the kapacitord {DEFAULT_VERSION} build (scripts/kapacitor-build; the first run compiles it)...")
    bin_dir = ensure_built(DEFAULT_VERSION)
    oncall = OnCall(timeline)
    stack.append(oncall.stop)
    oncall.start()
    (workdir / "bridge").mkdir()
    bridge = Bridge(workdir / "bridge", oncall.url, timeline)
    stack.append(bridge.stop)
    bridge.start()
    k = start_kapacitord(bin_dir, workdir / "kapacitord", bridge)
    assert bridge.proc is not None
    say(f"on-call receiver  {oncall.url}  (a thread of this process)")
    say(f"bridge            {bridge.url}  pid {bridge.proc.pid}  SQLite {bridge.db}, target \"{TARGET}\" (webhook)")
    say(f"kapacitord        {k.base_url}  pid {k.pid}  config rendered from kapacitor.conf.example")
    k.define_task(TASK, TICK.read_text(encoding="utf-8"), dbrps=[(DB, RP)])
    k.wait_task(TASK, lambda t: bool(t["executing"]) or bool(t["error"]), timeout=WAIT)
    task = k.task(TASK)
    if not task["executing"]:
        raise DemoError(f"task {TASK} did not start: {task['error']}\n{k.log_tail()}")
    say(f"task {TASK} = tick/{TICK.name}: {_thresholds()}")
    say()
    say(f"Feeding cpu,host={HOST}: one point per 30 s of data time, written as fast as Kapacitor takes them.")
    say(f"{'data time':>8}  {'usage_user':>10}  {'@alertState() says':<30} what happens")

    prev: Optional[dict[str, Any]] = None
    pending_since: Optional[int] = None
    for offset, value in SERIES:
        written = time.time()
        k.write(DB, RP, f"cpu,host={HOST},cpu=cpu-total usage_user={value} {T0 + offset}")
        row = annotated_row(k, offset)
        if row["alert_pending"] and not (prev and prev["alert_pending"] == row["alert_pending"]):
            pending_since = offset
        state = row["alert_level"]
        if row["alert_changed"]:
            state += f" (was {row['alert_previous_level']})"
        elif row["alert_pending"]:
            state += f", pending {row['alert_pending']}"
        say(f"{_clock(offset):>8}  {value:>8.1f} %  {state:<30} {_explain(row, prev, pending_since, offset)}", at=written)
        if row["alert_changed"]:
            level = row["alert_level"]
            expected = "resolved" if level == "OK" else "opened"
            oncall.wait(lambda: (ALERT_ID, expected) in oncall.history, f"{ALERT_ID} {expected}")
            bridge.wait_delivered(ALERT_ID, level)
            timeline.flush()
        prev = row

    say()
    opened = sum(1 for _, what in oncall.history if what == "opened")
    resolved = sum(1 for _, what in oncall.history if what == "resolved")
    say(f"Result: {opened} incident opened, {resolved} resolved; the bridge accepted "
        f"{bridge.count('alert.accepted')} events and delivered {bridge.count('delivery.ok')}.")
    for text in bridge.queue_table().splitlines():
        say(f"  outbox  {text}", stamp=False)
    if (opened, resolved) != (1, 1) or oncall.incidents[ALERT_ID].resolved_at is None:
        raise DemoError(f"expected one incident opened and resolved, got {oncall.history}")


def _terminate(signum: int, _frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the demo; 0 when the incident opened and resolved, 1 on a failed hop, 130 on Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, SQLite) afterwards")
    args = parser.parse_args(argv)
    # Ctrl-C must stop the demo even when started with SIGINT ignored (e.g. as a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    timeline = Timeline(sys.stdout)
    workdir = Path(tempfile.mkdtemp(prefix="kapacitor-oncall-demo-"))
    status = 1
    try:
        run(timeline, workdir)
        status = 0
    except KeyboardInterrupt:
        timeline.flush()
        timeline.line("interrupted")
        status = 130
    except (DemoError, KapacitordError) as exc:
        timeline.flush()
        timeline.line(f"FAILED: {exc}")
    except Exception as exc:  # noqa: BLE001 - a demo reports, stops everything and keeps the logs
        timeline.flush()
        timeline.line(f"FAILED: {exc.__class__.__name__}: {exc}")
    finally:
        # Stop in reverse order (kapacitord first, so it sends nothing into a stopped bridge),
        # even if a second Ctrl-C arrives meanwhile.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while stack:
            try:
                stack.pop()()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                timeline.line(f"while stopping: {exc!r}")
        if args.keep or status == 1:
            timeline.line(f"stopped everything; configs, logs and SQLite kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            timeline.line("stopped kapacitord, the bridge and the receiver; removed the work dir")
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return status
