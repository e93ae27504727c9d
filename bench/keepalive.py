"""Keep-alive cost: one re-post round of N open Alertmanager alerts, per alert.

    .venv/bin/python -m bench --sections keepalive      # part of `make bench`
    .venv/bin/python -m bench.keepalive [--alerts 10000] [--runs 5] [--no-write]

N open incidents are written to a fresh store's ledger; :class:`bridge.keepalive.KeepAlive`
then re-posts all of them to :mod:`bench.fast_receiver` (its own process, answers 200),
``--runs`` times. Reported per run: wall time of the round, per alert (wall and this
process's CPU), requests, and the longest time one batch held its keys (while held, a
new event of those ids waits: that is what keep-alive can cost delivery). The anchor in
the same run: one plain delivery-sized POST of one alert on the same connection pool,
so the per-alert figure reads as "x of one single-alert POST". The figures go to the
"Alertmanager keep-alive" section of ``bench/results.md`` (``bench.report`` renders it
from the results JSON; run alone, this module replaces that section in place).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from bridge.config import DeliveryConfig, TargetConfig
from bridge.delivery import Sender
from bridge.keepalive import BATCH, KeepAlive
from bridge.ledger import record_delivery
from bridge.outbox import Outbox
from bridge.store import open_store
from bridge.targets.base import Options, get_type

from .bridge_load import FastReceiver

RESULTS = Path(__file__).resolve().parent / "results.md"
HEADER = "## Alertmanager keep-alive"


def _seed(path: str, alerts: int) -> None:
    conn = open_store(path, create=True)
    try:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        now = time.time()
        for i in range(alerts):
            key = f"cpu:host=web-{i:05d}"
            body = json.dumps({
                "id": key, "level": "CRITICAL", "time": "2026-01-01T00:00:00Z", "message": f"{key} is CRITICAL",
                "data": {"series": [{"name": "cpu", "tags": {"host": f"web-{i:05d}", "cpu": "cpu-total"}}]},
            }).encode()
            record_delivery(cur, "am", key, "CRITICAL", body, i + 1, now)
        cur.execute("COMMIT")
    finally:
        conn.close()


class _TimedHold:
    """Wraps the outbox to measure how long each batch holds its keys."""

    def __init__(self, box: Outbox) -> None:
        self.box = box
        self.holds: List[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.box, name)

    def hold(self, target: str, keys: Any) -> Any:
        import contextlib

        @contextlib.contextmanager
        def timed() -> Any:
            started = time.perf_counter()
            with self.box.hold(target, keys) as held:
                yield held
            self.holds.append(time.perf_counter() - started)

        return timed()


def measure(alerts: int, runs: int) -> Dict[str, Any]:
    receiver = FastReceiver()
    workdir = tempfile.mkdtemp(prefix="bench-keepalive-")
    path = os.path.join(workdir, "bridge.db")
    try:
        _seed(path, alerts)
        box = Outbox(path).open()
        am = get_type("alertmanager").from_options("am", Options("target.am", {"url": receiver.url}))
        config = TargetConfig(name="am", type="alertmanager", target=am)
        sender = Sender(DeliveryConfig())
        timed = _TimedHold(box)
        keepalive = KeepAlive({"am": config}, timed, sender)  # type: ignore[arg-type]
        # Anchor: one single-alert POST through the same sender (warm connection).
        one = am.request([am.keepalive(box.told("am", "cpu:host=web-00000"), time.time())])  # type: ignore[arg-type, list-item]
        sender.send(config, one)
        anchor = []
        for _ in range(200):
            t = time.perf_counter()
            sender.send(config, one)
            anchor.append(time.perf_counter() - t)
        rows = []
        for _ in range(runs):
            timed.holds.clear()
            wall, cpu = time.perf_counter(), time.process_time()
            result = keepalive.round("am")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert result.alerts == alerts and result.failed == 0, result
            rows.append({"wall": wall, "cpu": cpu, "requests": result.requests, "max_hold": max(timed.holds)})
        keepalive.stop()
        box.close()
    finally:
        receiver.close()
    anchor_s = statistics.median(anchor)
    wall = statistics.median(r["wall"] for r in rows)
    cpu = statistics.median(r["cpu"] for r in rows)
    return {
        "alerts": alerts,
        "runs": runs,
        "batch": BATCH,
        "round_wall_s": wall,
        "per_alert_wall_us": wall / alerts * 1e6,
        "per_alert_cpu_us": cpu / alerts * 1e6,
        "requests": rows[0]["requests"],
        "max_hold_ms": statistics.median(r["max_hold"] for r in rows) * 1e3,
        "anchor_single_post_us": anchor_s * 1e6,
        "spread_wall_s": (min(r["wall"] for r in rows), max(r["wall"] for r in rows)),
    }


def markdown(fig: Dict[str, Any], command: str) -> str:
    lo, hi = fig["spread_wall_s"]
    return "\n".join([
        HEADER,
        "",
        f"`{command}` — one re-post round of {fig['alerts']:,} open alerts to a local 200-answering receiver, "
        f"median of {fig['runs']} runs, batches of {fig['batch']} alerts.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| round, wall | {fig['round_wall_s']:.3f} s (min {lo:.3f}, max {hi:.3f}) |",
        f"| per alert, wall | {fig['per_alert_wall_us']:.1f} µs |",
        f"| per alert, bridge CPU | {fig['per_alert_cpu_us']:.1f} µs |",
        f"| requests per round | {fig['requests']} |",
        f"| longest hold of one batch (new events of those ids wait) | {fig['max_hold_ms']:.1f} ms |",
        f"| anchor: one single-alert POST, same pool | {fig['anchor_single_post_us']:.1f} µs |",
        "",
        f"At the default resend_interval (1m) a round of {fig['alerts']:,} alerts takes "
        f"{fig['round_wall_s'] / 60 * 100:.2f} % of each interval and "
        f"{fig['per_alert_cpu_us'] * fig['alerts'] / 1e6 / 60 * 100:.2f} % of one core.",
        "",
    ])


def write(section: str) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    start = text.find(HEADER)
    if start >= 0:
        end = text.find("\n## ", start + len(HEADER))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text, encoding="utf-8")


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.keepalive", description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only, leave bench/results.md alone")
    args = parser.parse_args(argv)
    fig = measure(args.alerts, args.runs)
    command = f"python -m bench.keepalive --alerts {args.alerts} --runs {args.runs}"
    section = markdown(fig, command)
    print(section)
    if not args.no_write:
        write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
