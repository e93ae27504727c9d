"""Alert-state memory: RSS after 1M points over 100k groups, with and without ``expire``.

The workload is hosts that come and go (containers, autoscaling groups): 1,000
hosts are live at a time, each sends 10 points 10 s apart, then the next 1,000
take over, 100k hosts in all. Without ``expire`` every host's state stays for
the life of the task; with ``expire(5m)`` only the hosts seen in the last five
minutes of point time are kept. RSS is read with psutil from the UDF process
once every point has come back; the snapshot (what kapacitord stores every
``snapshot-interval``) is sized and timed too, because kapacitord blocks on it.

    .venv/bin/python -m bench.udf_memory [--runs 5] [--points 1000000] [--groups 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import lru_cache
from typing import Dict, Optional, Sequence, Tuple

from udf.client import Duration, option

from .common import Figure, Log
from .driver import Session
from .udf_throughput import ALERT_OPTIONS, Section, ours_alert_state
from .workload import Workload

__all__ = ["measure", "main"]

SECTION = "UDF memory (alert-state, RSS of the UDF process)"
CMD = ".venv/bin/python -m bench.udf_memory"
EXPIRE_S = 300


@lru_cache(maxsize=1)
def _frames(points: int, groups: int, active: int) -> Tuple[bytes, ...]:
    return tuple(Workload(points, groups, active=active).frames())


def measure(
    runs: int = 5, points: int = 1_000_000, groups: int = 100_000, active: int = 1_000, log: Log = print
) -> Section:
    w = Workload(points, groups, active=active)
    frames = _frames(points, groups, active)
    variants = {
        "no-expire": list(ALERT_OPTIONS),
        "expire": list(ALERT_OPTIONS) + [option("expire", Duration.seconds(EXPIRE_S))],
    }
    cmd = f"{CMD} --runs {runs} --points {points} --groups {groups}"
    what = f"{points:,} points, {groups:,} groups ({active:,} live at a time, 10 points each)"
    figs: Dict[str, Figure] = {}
    for name in variants:
        label = "no expire" if name == "no-expire" else f"expire({EXPIRE_S // 60}m)"
        figs[f"rss-{name}"] = Figure(
            key=f"mem.rss.{name}",
            section=SECTION,
            label=f"RSS after {what}, {label}",
            unit="MiB",
            command=cmd,
            notes="extra: rss_after_init_mib, snapshot_mib, snapshot_s",
        )
        figs[f"rate-{name}"] = Figure(
            key=f"mem.rate.{name}",
            section=SECTION,
            label=f"alert-state throughput over {groups:,} churning groups, {label}",
            unit="points/s",
            command=cmd,
        )
    for r in range(runs):
        for name, opts in variants.items():
            subj = ours_alert_state(opts)
            with Session(subj, timeout=120) as s:
                s.handshake()
                base = s.rss()
                res = s.run(frames, points, w.keepalives)
                rss = s.rss()
                t = time.perf_counter()
                snap = s.snapshot_size()
                snap_s = time.perf_counter() - t
            f = figs[f"rss-{name}"]
            f.values.append(round(rss / 2**20, 1))
            f.add_extra("rss_after_init_mib", round(base / 2**20, 1))
            f.add_extra("snapshot_mib", round(snap / 2**20, 2))
            f.add_extra("snapshot_s", round(snap_s, 3))
            figs[f"rate-{name}"].values.append(round(res.rate, 1))
            figs[f"rate-{name}"].add_extra("udf_cpu", round(res.udf_cpu, 3))
            log(f"  round {r + 1}/{runs} {name:10s} rss {rss / 2**20:7.1f} MiB (init {base / 2**20:.1f})  "
                f"snapshot {snap / 2**20:6.2f} MiB in {snap_s:.2f}s  {res.rate:,.0f} points/s")
    return Section(list(figs.values()), {"memory_workload": what, "expire_s": EXPIRE_S})


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--groups", type=int, default=100_000)
    p.add_argument("--active", type=int, default=1_000)
    args = p.parse_args(argv)
    sec = measure(args.runs, args.points, args.groups, args.active)
    for f in sec.figures:
        print(f"{f.key:30s} median {f.median:>12,.1f} {f.unit}  min {f.minimum:,.1f}  max {f.maximum:,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
