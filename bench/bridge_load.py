"""Bridge: accepted alerts/s (durable commit), accept latency, and drain rate.

Per scale (number of distinct alert ids: 1, 1k, 100k) and per run:

1. **Accept.** The bridge (``kapacitor-oncall-bridge serve``, WAL + ``synchronous=FULL``)
   runs with its only target throttled (``rate_limit = "1/1h"``), so the accept path
   (parse, validate, group-committed insert, 202) is measured alone and the
   accepted alerts stay queued. 50 concurrent keep-alive clients (an asyncio HTTP/1.1
   client here, cheaper than any client library) post Kapacitor alert events; every
   202 is timed from the request's first byte to the response's last.
2. **Drain.** The bridge is stopped (SIGTERM: nothing lost) and restarted with
   ``rate_limit = "off"``; the queue (≥ 10.5k alerts) goes to a fast local receiver
   in its own process (:mod:`bench.fast_receiver`), which timestamps every arrival.
   Drain rate = (n - 1) / (n-th arrival - first arrival) over the first
   ``--drain-sample`` arrivals; then the bridge is stopped again and whatever is
   left stays queued for the next run (so the queue only grows).

Levels alternate CRITICAL/OK per id and ``repeat_interval = "0s"``, so nothing is
suppressed and every accepted alert is delivered. With one id everything is one
ordered queue (serial by design: a resolve never overtakes its trigger); with many
ids the delivery workers run in parallel. For the 100k-id scale the store first
gets 100k distinct ids parked on a second, throttled target (an outage backlog:
100k queue heads in the outbox), and each run posts over that same id space.

    .venv/bin/python -m bench.bridge_load [--runs 5] [--alerts 10000] [--ids 1 1000 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import psutil  # type: ignore[import-untyped]
import requests

from .common import PYTHON, REPO_ROOT, WORK_DIR, Figure, Log, machine_busy, repo_env
from .udf_throughput import Section

if TYPE_CHECKING:
    from tests.bridge.harness import BridgeProcess

__all__ = ["kapacitor_alert", "measure", "main", "post_all"]

SECTION = "Bridge (kapacitor-oncall-bridge serve, SQLite WAL, synchronous=FULL)"
CMD = ".venv/bin/python -m bench.bridge_load"
CLIENTS = 50
WARMUP = 500
TARGET = "load"
SEED_TARGET = "seed"


#: The drains before the async delivery engine (issue 15.3), measured with this bench (coalesce
#: off, 1k ids) on this machine: the old figures the report shows beside the new one.
BEFORE = ("original engine, main f941d07 (each worker waited for its own finish commit): drain 759 alerts/s "
          "(712–806), 930 µs of bridge CPU per delivered alert, `--runs 2 --ids 1000`; threaded engine with "
          "8 urllib3 workers, main f0504e3: 1,684/s and 510 µs at the last stop, 1,632/s and 594 µs "
          "re-measured at load 2.0 (`--runs 1 --ids 1000`)")


def kapacitor_alert(alert_id: str, level: str, previous: str, value: float, when: str) -> bytes:
    """The JSON body Kapacitor's ``.post()`` / ``[[httppost]]`` handler sends."""
    host = alert_id.rsplit("=", 1)[-1]
    return json.dumps(
        {
            "id": alert_id,
            "message": f"{alert_id} is {level}: usage_user={value}",
            "details": f"<pre>{alert_id} {level} usage_user={value}</pre>",
            "time": when,
            "duration": 0 if level != previous else 60_000_000_000,
            "level": level,
            "data": {
                "series": [
                    {
                        "name": "cpu",
                        "tags": {"cpu": "cpu-total", "host": host},
                        "columns": ["time", "usage_user"],
                        "values": [[when, value]],
                    }
                ]
            },
            "previousLevel": previous,
            "recoverable": True,
        },
        separators=(",", ":"),
    ).encode()


def make_bodies(count: int, ids: int, start: int = 0, stride: int = 1) -> List[bytes]:
    """``count`` events over ``ids`` alert ids; the n-th event of an id alternates CRITICAL/OK."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out = []
    for i in range(start, start + count):
        j = (i * stride) % ids
        k = i // ids
        level, previous = ("CRITICAL", "OK") if k % 2 == 0 else ("OK", "CRITICAL")
        out.append(kapacitor_alert(f"cpu:host=web-{j:06d}", level, previous, 50.0 + (i % 50), when))
    return out


# -- load generator ---------------------------------------------------------------


async def _client(
    port: int, path: bytes, bodies: Sequence[bytes], lat: List[float], statuses: Dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head_tpl = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
    perf = time.perf_counter
    try:
        for body in bodies:
            t = perf()
            writer.write(head_tpl + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            i = head.lower().find(b"content-length:")
            if i >= 0:
                n = int(head[i + 15 : head.find(b"\r\n", i)])
                if n:
                    await reader.readexactly(n)
            lat.append(perf() - t)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _post_all(port: int, target: str, bodies: Sequence[bytes], clients: int) -> Tuple[float, List[float], Dict[int, int]]:
    lat: List[float] = []
    statuses: Dict[int, int] = {}
    path = f"/alerts/{target}".encode()
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(port, path, bodies[c::clients], lat, statuses) for c in range(clients)))
    return time.perf_counter() - t0, lat, statuses


def post_all(port: int, target: str, bodies: Sequence[bytes], clients: int = CLIENTS) -> Tuple[float, List[float], Dict[int, int]]:
    """Post every body over ``clients`` keep-alive connections; (seconds, latencies, status counts)."""
    return asyncio.run(_post_all(port, target, bodies, clients))


def _pct(sorted_lat: List[float], p: float) -> float:
    return sorted_lat[min(len(sorted_lat) - 1, int(p * len(sorted_lat)))]


# -- receiver ----------------------------------------------------------------------


class FastReceiver:
    """:mod:`bench.fast_receiver` in a subprocess."""

    def __init__(self) -> None:
        from tests.bridge.harness import free_port

        self.port = free_port()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.fast_receiver", str(self.port)],
            stdout=subprocess.PIPE,
            env=repo_env(),
            cwd=str(REPO_ROOT),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError("fast receiver did not start")
        self.session = requests.Session()
        self.session.trust_env = False
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> Dict[str, Any]:
        data: Dict[str, Any] = self.session.get(self.url + "/_stats", timeout=5).json()
        return data

    def reset(self) -> None:
        self.session.get(self.url + "/_reset", timeout=5)

    def close(self) -> None:
        self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _config(receiver_url: str, throttled: bool) -> str:
    """Target ``load`` (throttled or not) and target ``seed`` (always throttled: a parked backlog)."""
    limit = '"1/1h"' if throttled else '"off"'
    return (
        "[server]\nmax_body_bytes = 1048576\n\n[store]\n\n[delivery]\nrepeat_interval = \"0s\"\ncoalesce = \"off\"\n\n"
        f"[[target]]\nname = \"{TARGET}\"\ntype = \"webhook\"\nurl = \"{receiver_url}/alerts\"\nrate_limit = {limit}\n\n"
        f"[[target]]\nname = \"{SEED_TARGET}\"\ntype = \"webhook\"\nurl = \"{receiver_url}/seed\"\nrate_limit = \"1/1h\"\n"
    )


#: The bridge's log level in the bench: "warning" leaves out the per-delivery info lines
#: (``delivery.ok``); ``--log-level info`` measures what they cost.
LOG_LEVEL = "warning"


def _start_bridge(workdir: str, receiver: FastReceiver, throttled: bool) -> "BridgeProcess":
    from tests.bridge.harness import BridgeProcess

    b = BridgeProcess(_config(receiver.url, throttled), workdir, args=["--log-level", LOG_LEVEL])
    b.start(timeout=60)
    return b


def _wait_count(receiver: FastReceiver, want: int, timeout: float, bridge: "BridgeProcess") -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = receiver.stats()
        if st["count"] >= want:
            return st
        if not bridge.running:
            raise RuntimeError(f"bridge died while draining:\n{bridge.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"receiver got {st['count']}/{want} alerts in {timeout:.0f}s")
        time.sleep(0.01)


def _cpu(p: Optional[psutil.Process]) -> float:
    if p is None:
        return 0.0
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def _seed(workdir: str, receiver: FastReceiver, ids: int, log: Log) -> float:
    """Park ``ids`` distinct alert ids in the store (target ``seed``, never delivered); seconds spent."""
    t = time.perf_counter()
    bridge = _start_bridge(workdir, receiver, throttled=True)
    try:
        secs, lat, statuses = post_all(bridge.port, SEED_TARGET, make_bodies(ids, ids))
        if statuses.get(202, 0) != ids:
            raise RuntimeError(f"seeding: bridge answered {statuses}")
    finally:
        bridge.stop()
    log(f"  seeded {ids:,} ids (parked on a throttled target) in {time.perf_counter() - t:.1f}s")
    return time.perf_counter() - t


def measure(
    runs: int = 5,
    alerts: int = 10_000,
    scales: Sequence[int] = (1, 1_000, 100_000),
    drain_sample: int = 3_000,
    log: Log = print,
) -> Section:
    sys.path.insert(0, str(REPO_ROOT))
    receiver = FastReceiver()
    figs: List[Figure] = []
    notes: Dict[str, object] = {
        "clients": CLIENTS,
        "alerts_per_run": alerts,
        "warmup_per_run": WARMUP,
        "drain_sample": drain_sample,
        "before": BEFORE,
        "log_level": LOG_LEVEL,
    }
    try:
        # Ceiling of the load generator itself: the same posts straight to the receiver.
        ceiling = Figure(
            key="bridge.generator_ceiling",
            section=SECTION,
            label=f"load generator alone → fast receiver ({CLIENTS} clients): its ceiling, not the bridge",
            unit="requests/s",
            command=f"{CMD} --runs {runs} --alerts {alerts}",
        )
        bodies = make_bodies(alerts, 1000)
        for _ in range(runs):
            secs, lat, _st = post_all(receiver.port, "ceiling", bodies)
            ceiling.values.append(round(len(lat) / secs, 1))
        figs.append(ceiling)
        for ids in scales:
            figs += _measure_scale(receiver, runs, alerts, ids, drain_sample, notes, log)
    finally:
        receiver.close()
    return Section(figs, notes)


def _measure_scale(
    receiver: FastReceiver,
    runs: int,
    alerts: int,
    ids: int,
    drain_sample: int,
    notes: Dict[str, object],
    log: Log,
) -> List[Figure]:
    name = {1: "1 id", 1000: "1k ids", 100_000: "100k ids"}.get(ids, f"{ids:,} ids")
    cmd = f"{CMD} --runs {runs} --alerts {alerts} --ids {ids} --drain-sample {drain_sample}"
    acc = Figure(
        key=f"bridge.accept.ids{ids}",
        section=SECTION,
        label=f"accepted alerts/s, {CLIENTS} clients, {name}",
        unit="alerts/s",
        command=cmd,
        target="≥ 5,000 alerts/s (issue 5)",
        compare="ge",
        threshold=5000,
        notes="202 only after the SQLite commit (WAL, synchronous=FULL); delivery throttled during the run",
    )
    p50 = Figure(key=f"bridge.p50.ids{ids}", section=SECTION, label=f"accept latency p50, {name}", unit="ms", command=cmd)
    p99 = Figure(
        key=f"bridge.p99.ids{ids}",
        section=SECTION,
        label=f"accept latency p99, {name}",
        unit="ms",
        command=cmd,
        target="< 20 ms (issue 5)",
        compare="le",
        threshold=20.0,
    )
    drain = Figure(
        key=f"bridge.drain.ids{ids}",
        section=SECTION,
        label=f"drain of a ≥ {alerts + WARMUP:,}-alert queue to a fast receiver, {name}, rate_limit off",
        unit="alerts/s",
        command=cmd,
        target="≥ 3,000 alerts/s (issue 15.3)" if ids > 1 else "",
        compare="ge" if ids > 1 else "",
        threshold=3000 if ids > 1 else None,
        notes=(
            "one id = one ordered queue: deliveries are strictly serial by design (a resolve never "
            "overtakes its trigger), so this is 1 / (one delivery's round trip)"
            if ids == 1
            else ""
        ),
    )
    workdir = str(WORK_DIR / f"bridge-ids{ids}")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    offset = 0
    stride = 1
    if ids > alerts:
        notes[f"seed_ids{ids}_s"] = round(_seed(workdir, receiver, ids, log), 1)
        offset = ids  # every id's next event is its second: OK after the seeded CRITICAL
        stride = 7919  # spread each run's posts over the whole id space (7919 is prime)
    me = psutil.Process()
    for r in range(runs):
        bridge = _start_bridge(workdir, receiver, throttled=True)
        try:
            assert bridge.proc is not None
            bp = psutil.Process(bridge.proc.pid)
            post_all(bridge.port, TARGET, make_bodies(WARMUP, ids, offset, stride))
            offset += WARMUP
            bodies = make_bodies(alerts, ids, offset, stride)
            offset += alerts
            c_b, c_me, busy0 = _cpu(bp), _cpu(me), machine_busy()
            secs, lat, statuses = post_all(bridge.port, TARGET, bodies)
            d_b, d_me, busy = _cpu(bp) - c_b, _cpu(me) - c_me, machine_busy() - busy0
            ok = statuses.get(202, 0)
            if ok != len(bodies):
                raise RuntimeError(f"bridge answered {statuses} to {len(bodies)} posts:\n{bridge.log_text()[-2000:]}")
            lat.sort()
            acc.values.append(round(ok / secs, 1))
            acc.add_extra("bridge_cpu", round(d_b / secs, 3))
            acc.add_extra("bridge_us_per_alert", round(d_b / ok * 1e6, 1))
            acc.add_extra("generator_cpu", round(d_me / secs, 3))
            acc.add_extra("other_cpu", round(max(0.0, busy - d_b - d_me) / secs, 3))
            p50.values.append(round(_pct(lat, 0.50) * 1000, 2))
            p99.values.append(round(_pct(lat, 0.99) * 1000, 2))
            p99.add_extra("max_ms", round(lat[-1] * 1000, 2))
        finally:
            bridge.stop()
        receiver.reset()
        t_start = time.monotonic()
        bridge = _start_bridge(workdir, receiver, throttled=False)
        try:
            assert bridge.proc is not None
            bp = psutil.Process(bridge.proc.pid)
            c_b = _cpu(bp)
            st = _wait_count(receiver, drain_sample, 600, bridge)
            d_b = _cpu(bp) - c_b
        finally:
            bridge.stop()  # SIGTERM: in-flight attempts finish, the rest stays queued
        span = max(1e-6, st["last"] - st["first"])
        drain.values.append(round((st["count"] - 1) / span, 1))
        drain.add_extra("startup_to_first_s", round(st["first"] - t_start, 2))
        drain.add_extra("bridge_us_per_alert", round(d_b / st["count"] * 1e6, 1))
        log(f"  round {r + 1}/{runs} {name:8s} accept {ok / secs:8,.0f}/s p50 {p50.values[-1]:6.2f} ms "
            f"p99 {p99.values[-1]:6.2f} ms (bridge {acc.extra['bridge_cpu'][-1]:4.0%} cpu, "
            f"{acc.extra['bridge_us_per_alert'][-1]:.0f} µs/alert; generator {acc.extra['generator_cpu'][-1]:4.0%})  "
            f"drain {drain.values[-1]:8,.0f}/s ({drain.extra['bridge_us_per_alert'][-1]:.0f} µs/alert)")
    return [acc, p50, p99, drain]


def main(argv: Optional[Sequence[str]] = None) -> int:
    global LOG_LEVEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--alerts", type=int, default=10_000)
    p.add_argument("--ids", type=int, nargs="+", default=[1, 1_000, 100_000])
    p.add_argument("--drain-sample", type=int, default=3_000, help="arrivals timed per drain")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="the bridge's log level (info: every delivery writes a delivery.ok line)")
    args = p.parse_args(argv)
    LOG_LEVEL = args.log_level
    sec = measure(args.runs, args.alerts, args.ids, args.drain_sample)
    for f in sec.figures:
        print(f"{f.key:28s} median {f.median:>10,.2f} {f.unit}  min {f.minimum:,.2f}  max {f.maximum:,.2f}"
              + (f"  target {f.target}: {'met' if f.met else 'NOT met'}" if f.target else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
