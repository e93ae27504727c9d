"""Replicas on PostgreSQL beside SQLite: accept rate and p99, drain rate, failover gap.

    .venv/bin/python -m bench --sections replicas      (with the other sections: make bench)
    .venv/bin/python -m bench.replicas --runs 3 --alerts 10000
    .venv/bin/python -m bench.replicas --runs 4 --only postgres:1 --writers 1   (A/B of [store] writers)

* **Accept**: 50 keep-alive clients post ``alerts`` Kapacitor events (1,000 ids)
  spread over the replicas' ports, the target throttled (``1/1h``) so only the
  accept path runs; alerts/s and p99 of request → 202. SQLite (one process) is
  the anchor, measured in the same run.
* **Drain**: the same bridges restart with ``rate_limit = "off"`` on the same
  store and deliver the backlog to the fast receiver; deliveries/s from the first
  arrival to the last.
* **Failover gap**: two replicas, ``lease = 3s``; the receiver never answers the
  first request, so one replica holds the key in flight; that replica is
  ``kill -9``'ed, and the gap is the time until the other replica's delivery of
  the same event arrives (goal: < lease + 1 s).

A private PostgreSQL server (``fsync`` on) runs on the same 2 cores as everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import psutil  # type: ignore[import-untyped]
import psycopg

from .bridge_load import FastReceiver, _client, kapacitor_alert
from .common import REPO_ROOT, Figure, Log
from .udf_throughput import Section

SECTION = "replicas"
CMD = "python -m bench.replicas"
CLIENTS = 50
#: Alerts per accept run. This machine (a VM) stalls 40-100 ms now and then, every client at
#: once; with 5,000 alerts one such stall was the whole 1 % of the p99, with 10,000 it is half.
ALERTS = 10_000
LEASE = 3.0
SETUPS: Tuple[Tuple[str, int], ...] = (("sqlite", 1), ("postgres", 1), ("postgres", 3))


def _config(url: str, backend: str, throttled: bool, db: str, lease: float = LEASE, timeout: str = "10s",
            writers: Optional[int] = None) -> str:
    store = (f'backend = "postgres"\ndsn = "env:BRIDGE_PG_DSN"\nlease = "{lease}s"\n' if backend == "postgres"
             else f'path = "{db}"\n')
    if writers is not None and backend == "postgres":
        store += f"writers = {writers}\n"
    limit = '"1/1h"' if throttled else '"off"'
    return (f'[store]\n{store}\n[delivery]\nrepeat_interval = "0s"\ncoalesce = "off"\ntimeout = "{timeout}"\n\n'
            f'[[target]]\nname = "load"\ntype = "webhook"\nurl = "{url}/alerts"\nrate_limit = {limit}\n')


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of ``pid`` (with ``children``: also of its live and reaped children,
    e.g. the postmaster's backends)."""
    process = psutil.Process(pid)
    own = process.cpu_times()
    total = own.user + own.system
    if children:
        total += own.children_user + own.children_system
        for child in process.children():
            try:
                times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return float(total)


def _steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests (``/proc/stat``, all CPUs): a run with a lot
    of it measured the host, not the bridge."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _bridges(n: int, text: str, root: Path, env: Dict[str, str]) -> List[Any]:
    from tests.bridge.harness import BridgeProcess

    out = [BridgeProcess(text, root / f"r{i}", env=env, args=["--log-level", "warning"]) for i in range(n)]
    for b in out:  # all at once: a drain by "3 replicas" must not be one replica's while the others start
        b.start(wait=False)
    for b in out:
        b.wait_ready(60)
    return out


async def _post(ports: Sequence[int], bodies: Sequence[bytes]) -> Tuple[float, List[float], Dict[int, int]]:
    lat: List[float] = []
    statuses: Dict[int, int] = {}
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(ports[c % len(ports)], b"/alerts/load", bodies[c::CLIENTS], lat, statuses)
                           for c in range(CLIENTS)))
    return time.perf_counter() - t0, lat, statuses


def _bodies(count: int, ids: int) -> List[bytes]:
    """``count`` distinct events over ``ids`` ids (levels alternate per id). Each carries its own
    value: the PostgreSQL store keeps one copy of byte-identical events (two replicas posting
    the same event), which would shrink the backlog."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    out = []
    for i in range(count):
        level, previous = ("CRITICAL", "OK") if (i // ids) % 2 == 0 else ("OK", "CRITICAL")
        out.append(kapacitor_alert(f"cpu:host=web-{i % ids:06d}", level, previous, float(i), when))
    return out


def _one_run(backend: str, n: int, alerts: int, receiver: FastReceiver, pg: Any, root: Path,
             writers: Optional[int] = None) -> Dict[str, float]:
    env: Dict[str, str] = {}
    db = str(root / "outbox.db")

    def pg_cpu() -> float:  # the SQLite setups leave postgres idle: none of its CPU is theirs
        return _cpu_seconds(pg.proc.pid, children=True) if backend == "postgres" else 0.0

    if backend == "postgres":
        env["BRIDGE_PG_DSN"] = pg.create_database("bench")
    receiver.reset()
    bridges = _bridges(n, _config(receiver.url, backend, True, db, writers=writers), root, env)
    bodies = _bodies(alerts, 1000)
    try:
        pids = [b.proc.pid for b in bridges]
        before_cpu = (sum(_cpu_seconds(p) for p in pids), pg_cpu(), time.process_time())
        steal = _steal_seconds()
        secs, lat, statuses = asyncio.run(_post([b.port for b in bridges], bodies))
        steal = _steal_seconds() - steal
        cpu_bridges = sum(_cpu_seconds(p) for p in pids) - before_cpu[0]
        cpu_pg = pg_cpu() - before_cpu[1]
        cpu_gen = time.process_time() - before_cpu[2]
    finally:
        for b in bridges:
            b.stop()
    if statuses.get(202, 0) != alerts:
        raise RuntimeError(f"{backend} x{n}: statuses {statuses}")
    lat.sort()
    before = int(receiver.stats()["count"])
    receiver.reset()
    want = alerts - before
    pg_before = pg_cpu()
    bridges = _bridges(n, _config(receiver.url, backend, False, db, writers=writers), root / "drain", env)
    # Rate and CPU of the drain from the moment every replica is up (not their start-up).
    drain_pids = [b.proc.pid for b in bridges]
    ready_at = time.monotonic()
    mark = (int(receiver.stats()["count"]), sum(_cpu_seconds(p) for p in drain_pids), pg_cpu())
    try:
        deadline = time.monotonic() + 300
        while True:
            st = receiver.stats()
            if int(st["count"]) >= want:
                drain_bridges = sum(_cpu_seconds(p) for p in drain_pids)
                drain_pg = pg_cpu()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{backend} x{n}: drain got {st['count']}/{want}")
            time.sleep(0.01)
    finally:
        for b in bridges:
            b.stop()
    count, first, last = int(st["count"]), float(st["first"]), float(st["last"])
    before_ready = mark[0]
    if want - mark[0] < 2:
        # A tiny backlog went before every replica was up: every arrival and whole-life CPU.
        mark = (0, 0.0, pg_before)
    if mark[0] == 0:
        drain = (count - 1) / max(1e-6, last - first)
    else:  # CLOCK_MONOTONIC in the receiver's process, as here
        drain = (count - mark[0]) / max(1e-6, last - ready_at)
    return {"accept": alerts / secs, "p99": lat[int(0.99 * len(lat))] * 1000,
            "cpu_bridges": cpu_bridges / alerts * 1e6, "cpu_pg": cpu_pg / alerts * 1e6,
            "cpu_gen": cpu_gen / alerts * 1e6,
            "drain_cpu_bridges": (drain_bridges - mark[1]) / max(1, want - mark[0]) * 1e6,
            "drain_cpu_pg": (drain_pg - mark[2]) / max(1, want - mark[0]) * 1e6,
            "drain": drain, "drained_before_ready": before_ready / max(1, want), "steal_ms": steal * 1000}


class _HangFirst(BaseHTTPRequestHandler):
    """The first request after a reset never gets an answer; later ones get 200 and are timed."""

    server: "_HangServer"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        with self.server.lock:
            self.server.seen += 1
            hang = self.server.seen == 1
            if not hang:
                self.server.arrivals.append(time.time())
        if hang:
            self.server.release.wait(120)
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _HangServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HangFirst)
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.seen = 0
        self.arrivals: List[float] = []


def _failover_gap(pg: Any, root: Path) -> float:
    from tests.bridge.harness import kapacitor_event, wait_until

    hang = _HangServer()
    threading.Thread(target=hang.serve_forever, daemon=True).start()
    dsn = pg.create_database("failover")
    url = f"http://127.0.0.1:{hang.server_address[1]}"
    bridges = _bridges(2, _config(url, "postgres", False, "", timeout="100s"), root, {"BRIDGE_PG_DSN": dsn})
    try:
        status, _ = bridges[0].post_alert("load", kapacitor_event("cpu:failover", "CRITICAL"))
        assert status == 202
        wait_until(lambda: hang.seen >= 1, timeout=30)
        with psycopg.connect(dsn) as conn:
            found = conn.execute("SELECT owner FROM oncall_queue WHERE inflight_seq IS NOT NULL").fetchone()
        assert found is not None
        holder = next(b for b in bridges if str(found[0]).endswith(f":{b.port}"))
        killed_at = time.time()
        holder.kill9()
        wait_until(lambda: hang.arrivals, timeout=LEASE * 10)
        return hang.arrivals[0] - killed_at
    finally:
        hang.release.set()
        for b in bridges:
            b.close()
        hang.shutdown()
        hang.server_close()


def measure(runs: int = 3, alerts: int = ALERTS, log: Log = print,
            setups: Sequence[Tuple[str, int]] = SETUPS, failover: bool = True,
            writers: Optional[int] = None) -> Section:
    sys.path.insert(0, str(REPO_ROOT))
    from tests.pgserver import PgServer

    cmd = f"{CMD} --runs {runs} --alerts {alerts}" + ("" if writers is None else f" --writers {writers}")
    figs: Dict[str, Figure] = {}

    def fig(key: str, label: str, unit: str, **kw: Any) -> Figure:
        if key not in figs:
            figs[key] = Figure(key=f"{SECTION}.{key}", section=SECTION, label=label, unit=unit, command=cmd, **kw)
        return figs[key]

    loads: List[float] = []
    pg = PgServer().start()
    receiver = FastReceiver()
    try:
        for _ in range(runs):
            for backend, n in setups:
                name = f"{backend} × {n}"
                with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
                    got = _one_run(backend, n, alerts, receiver, pg, Path(tmp), writers)
                log(f"  {name}: accept {got['accept']:.0f}/s p99 {got['p99']:.1f} ms, drain {got['drain']:.0f}/s;"
                    f" CPU µs/alert: bridges {got['cpu_bridges']:.0f}, postgres {got['cpu_pg']:.0f},"
                    f" generator {got['cpu_gen']:.0f}; drain CPU µs/delivery: bridges {got['drain_cpu_bridges']:.0f},"
                    f" postgres {got['drain_cpu_pg']:.0f} ({got['drained_before_ready']:.0%} delivered before every replica was up);"
                    f" steal while accepting {got['steal_ms']:.0f} ms")
                total = backend == "postgres"  # the goal holds for 1 and for 3 replicas
                fig(f"accept.{backend}{n}", f"accepted alerts/s, {name}", "alerts/s",
                    **({"target": "≥ 5,000 /s", "compare": "ge", "threshold": 5000.0} if total else {})
                    ).values.append(round(got["accept"], 1))
                fig(f"p99.{backend}{n}", f"accept latency p99, {name}", "ms",
                    **({"target": "< 50 ms", "compare": "le", "threshold": 50.0} if total else {})
                    ).values.append(round(got["p99"], 2))
                fig(f"drain.{backend}{n}", f"drain to fast receiver, {name}", "deliveries/s").values.append(
                    round(got["drain"], 1))
                for part, who in (("bridges", "bridge processes"), ("pg", "postgres (all its processes)")):
                    if part == "pg" and backend != "postgres":
                        continue
                    fig(f"drain_cpu_{part}.{backend}{n}", f"drain CPU per delivery, {who}, {name}",
                        "µs").values.append(round(got[f"drain_cpu_{part}"], 1))
                for part, who in (("bridges", "bridge processes"), ("pg", "postgres (all its processes)"),
                                  ("gen", "load generator")):
                    if part == "pg" and backend != "postgres":
                        continue
                    fig(f"cpu_{part}.{backend}{n}", f"accept CPU per alert, {who}, {name}", "µs").values.append(
                        round(got[f"cpu_{part}"], 1))
                cores = os.cpu_count() or 1
                per_alert = got["cpu_bridges"] + got["cpu_pg"] + got["cpu_gen"]
                fig(f"ceiling.{backend}{n}",
                    f"accept ceiling if bridges, postgres and generator had all {cores} cores (CPU per alert), {name}",
                    "alerts/s").values.append(round(cores * 1e6 / per_alert, 1))
                loads.append(os.getloadavg()[0])
            if not failover:
                continue
            with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
                gap = _failover_gap(pg, Path(tmp))
            log(f"  failover gap {gap:.2f}s (lease {LEASE}s)")
            fig("failover_gap", f"failover gap: kill -9 of the key holder → delivery by another (lease {LEASE:.0f} s)",
                "s", target=f"< {LEASE + 1:.0f} s", compare="le", threshold=LEASE + 1).values.append(round(gap, 2))
    finally:
        receiver.close()
        pg.close()
    notes = {"clients": CLIENTS, "alerts_per_run": alerts, "lease": LEASE, "setups": [list(s) for s in setups],
             "load": [round(x, 2) for x in loads]}
    return Section(list(figs.values()), notes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=CMD, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--alerts", type=int, default=ALERTS)
    p.add_argument("--writers", type=int, help="PostgreSQL replicas: [store] writers (default: the bridge's)")
    p.add_argument("--only", metavar="BACKEND:N", action="append", default=[],
                   help="measure only these setups (e.g. postgres:1), without the failover gap: "
                        "a quick loop while tuning one figure")
    args = p.parse_args(argv)
    setups = tuple((b, int(n)) for b, n in (o.split(":") for o in args.only)) or SETUPS
    sec = measure(args.runs, args.alerts, setups=setups, failover=not args.only, writers=args.writers)
    for f in sec.figures:
        print(f"{f.label}: median {f.median} {f.unit} (runs {f.values})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
