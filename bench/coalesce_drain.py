"""Outage coalescing: how soon a backlog reaches the latest state under a platform's rate limit.

The backlog: ``ids`` alert ids that each flipped ``flips`` times (CRITICAL → WARNING
→ OK → …, shifted per id so the final states are mixed) while the platform was
down, queued in a real outbox file in the order Kapacitor sent them. The platform
comes back with Grafana OnCall's limit, 300 requests per 5 minutes.

The drain runs on a **fake clock**: the real :class:`bridge.outbox.Outbox` (claims,
head-only order, coalescing in its writer transaction, the incident ledger), the
real :class:`bridge.ratelimit.RateLimiter` (sliding window plus its safety margin)
and a single-threaded loop doing what the dispatcher does (coalesce, peek with
resolves first, wait for a token, claim, deliver, finish). A delivery is taken to
be instantaneous and successful, so the clock only moves when the limiter says
wait: the time measured is the limit's, not this machine's. The loop stops when
every id's last delivered level is its final one ("latest state reached").

The figure is history time ÷ coalesced time (``coalesce = "off"`` vs the default
``"worst-then-latest"``); deliveries needed and the projected minutes are reported
beside it. The run is deterministic: one run gives the same figure as five.

    .venv/bin/python -m bench.coalesce_drain [--events 10000] [--flips 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .common import REPO_ROOT, Figure, Log
from .udf_throughput import Section

__all__ = ["DrainResult", "drain", "markdown", "measure", "main", "splice"]

SECTION = "Outage coalescing"
CMD = ".venv/bin/python -m bench.coalesce_drain"
LEVELS = ("CRITICAL", "WARNING", "OK")
TARGET = "oncall"
#: How long the platform was down before it returns (only needs to exceed coalescing's backlog age).
OUTAGE_SECONDS = 3600.0


@dataclass(frozen=True)
class DrainResult:
    """One drain of the backlog in one coalescing mode."""

    mode: str
    events: int
    ids: int
    deliveries: int  #: deliveries made until every id was in its latest state
    seconds: float  #: fake-clock time from the platform's return to the latest state everywhere
    superseded: int


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _final(i: int, flips: int) -> str:
    return LEVELS[(i + flips - 1) % 3]


def drain(mode: str, ids: int, flips: int, count: int = 300, seconds: float = 300.0,
          workdir: Optional[Path] = None) -> DrainResult:
    """Queue the backlog, then drain it on the fake clock under ``count`` per ``seconds``."""
    sys.path.insert(0, str(REPO_ROOT))
    from bridge.outbox import Outbox
    from bridge.ratelimit import RateLimiter
    from bridge.targets.base import RateLimit

    # The store's fsync speed does not enter a fake-clock figure: use memory-backed files if there are any.
    base = workdir or (Path("/dev/shm") if os.path.isdir("/dev/shm") else None)
    tmp = Path(tempfile.mkdtemp(prefix="coalesce-", dir=base))
    clock = _FakeClock()
    box = Outbox(str(tmp / "outbox.db"), clock=clock).open()
    try:
        pending = []
        for j in range(flips):
            for i in range(ids):
                key, level = f"cpu:host=h{i:05d}", LEVELS[(i + j) % 3]
                body = json.dumps({"id": key, "level": level, "time": "2026-01-01T00:00:00Z"}).encode()
                pending.append(box.enqueue(TARGET, key, level, body))
        for future in pending:
            future.result(60)
        clock.now += OUTAGE_SECONDS  # the platform was down this long: the queue is a backlog
        final = {f"cpu:host=h{i:05d}": _final(i, flips) for i in range(ids)}
        limiter = RateLimiter(RateLimit(count, seconds), clock=clock)
        last: Dict[str, str] = {}
        in_state = 0
        deliveries = superseded = 0
        started = clock.now
        while in_state < ids:
            if mode != "off":
                superseded += box.coalesce(TARGET, mode)
            head, due = box.peek(TARGET, clock.now, resolves_first=True)
            if head is None:
                if due is None:
                    raise RuntimeError(f"queue empty with {ids - in_state} ids not in their latest state")
                clock.now = due
                continue
            wait = limiter.wait_time()
            if wait > 0:
                clock.now += wait
                continue
            assert box.claim(head) and limiter.try_acquire()
            box.finish(head, "delivered", attempts=1, status=200)
            deliveries += 1
            before = last.get(head.key) == final[head.key]
            last[head.key] = head.level
            after = head.level == final[head.key]
            in_state += int(after) - int(before)
        return DrainResult(mode, ids * flips, ids, deliveries, clock.now - started, superseded)
    finally:
        box.close()
        shutil.rmtree(tmp, ignore_errors=True)


def measure(runs: int = 1, events: int = 10_000, flips: int = 20, log: Log = print) -> Section:
    """The bench section: one deterministic drain per mode (``runs`` repeats them anyway)."""
    ids = max(1, events // flips)
    history = coalesced = None
    speedups: List[float] = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        history = drain("off", ids, flips)
        coalesced = drain("worst-then-latest", ids, flips)
        if coalesced.seconds <= 0:
            raise ValueError(f"the coalesced drain fits in one rate-limit window ({coalesced.deliveries} deliveries): "
                             "use a larger backlog for a ratio")
        speedups.append(round(history.seconds / coalesced.seconds, 2))
        log(f"  history {history.deliveries} deliveries {history.seconds / 60:.1f} min; coalesced "
            f"{coalesced.deliveries} deliveries {coalesced.seconds / 60:.1f} min; ×{speedups[-1]} "
            f"({time.perf_counter() - t:.0f}s wall)")
    assert history is not None and coalesced is not None
    shape = f"{ids * flips:,}-event backlog ({ids:,} ids × {flips} flips)"
    cmd = f"{CMD} --events {ids * flips} --flips {flips}"
    figs = [
        Figure(
            key="coalesce.speedup",
            section=SECTION,
            label=f"{shape} to latest state under 300/5 min: history time ÷ coalesced time",
            unit="×",
            values=speedups,
            command=cmd,
            target="≥ 10×",
            compare="ge",
            threshold=10.0,
        ),
        Figure(key="coalesce.history_minutes", section=SECTION,
               label=f"history replay (`coalesce = \"off\"`): {history.deliveries:,} deliveries",
               unit="min", values=[round(history.seconds / 60, 1)], command=cmd),
        Figure(key="coalesce.coalesced_minutes", section=SECTION,
               label=f"coalesced (`\"worst-then-latest\"`): {coalesced.deliveries:,} deliveries, "
                     f"{coalesced.superseded:,} superseded",
               unit="min", values=[round(coalesced.seconds / 60, 1)], command=cmd),
    ]
    notes = {"ids": ids, "flips": flips, "history_deliveries": history.deliveries,
             "coalesced_deliveries": coalesced.deliveries, "superseded": coalesced.superseded,
             "clock": "fake"}
    return Section(figs, notes)


def markdown(figs: List[Figure], notes: Dict[str, object], provenance: str = "") -> List[str]:
    """The results.md section (``bench.report`` and ``--results`` both use it)."""
    lines = [
        f"## {SECTION}",
        "",
    ]
    if provenance:
        lines += [provenance, ""]
    lines += [
        f"After an outage, {notes.get('ids', 0):,} ids that flipped {notes.get('flips', 0)} times each "
        "(final states mixed) drain to the platform under Grafana OnCall's 300 requests / 5 min. "
        "**Fake clock**: the real outbox (claims, coalescing, ledger) and the real rate limiter, driven by a "
        "one-thread dispatcher loop whose deliveries take no time, so the minutes are the limit's, not this "
        "machine's; they are computed from the deliveries needed. \"Latest state\" = every id's last "
        "delivered level is its final one. Deterministic: the same figure on every run.",
        "",
        "| figure | value | target | |",
        "|---|---|---|---|",
    ]
    for f in figs:
        value = "—" if f.median is None else f"{f.median:g} {f.unit}"
        met = "" if f.threshold is None or f.median is None else (
            "**met**" if f.median >= f.threshold else "**NOT met**")
        lines.append(f"| {f.label} | {value} | {f.target or '—'} | {met} |")
    lines += ["", f"Command: `{figs[0].command}`" if figs else "", ""]
    return lines


def splice(path: Path, section: List[str]) -> None:
    """Replace (or insert before the profiles) this section of an existing results.md."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    lines = text.split("\n")
    head = f"## {SECTION}"
    if head in lines:
        start = lines.index(head)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    else:
        start = end = next((i for i, line in enumerate(lines) if line.startswith("## Profiles")), len(lines))
    path.write_text("\n".join(lines[:start] + section + lines[end:]), encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.coalesce_drain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--flips", type=int, default=20)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--results", type=Path, help="also write this section into that results.md")
    args = p.parse_args(argv)
    load = os.getloadavg()
    sec = measure(args.runs, args.events, args.flips)
    for f in sec.figures:
        print(f"{f.label}: {f.median} {f.unit}")
    if args.results is not None:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        provenance = (
            f"*Measured by `{CMD} --events {args.events} --flips {args.flips} --results {args.results}` on {when} "
            f"({args.runs} run per figure; load average at start {', '.join(f'{x:.2f}' for x in load)}, "
            "which a fake-clock figure does not depend on).*"
        )
        splice(args.results, markdown(sec.figures, sec.notes, provenance))
        print(f"wrote the {SECTION!r} section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
