"""``python -m bench`` (``make bench``): every benchmark, then bench/results.md and results.png.

    make bench BENCH_ARGS="--official-agent /tmp/kapacitor-src"
    .venv/bin/python -m bench [--official-agent DIR] [--runs 5] [--sections udf memory ...] [--quick]

Sections: ``udf`` (throughput vs InfluxData's agent), ``memory``, ``kapacitord``
(through a real kapacitord), ``bridge``, ``replicas`` (PostgreSQL replicas beside
SQLite), ``coalesce`` (outage backlog under a rate limit, fake clock:
:mod:`bench.coalesce_drain`), ``profile``. ``--sections`` re-measures
only those and merges them into the previous ``bench/results.json`` (kept in the
repository beside ``results.md``, so a fresh clone re-measures one section without
dropping the others).
``--quick`` shrinks every input for a smoke run (figures meaningless).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .common import BENCH_DIR, Figure, load_results, machine_facts, merge_results, save_results

SECTIONS = ("udf", "memory", "kapacitord", "bridge", "replicas", "coalesce", "profile", "keepalive")
#: Section name on the command line -> figure key prefix and report heading key.
REPORT_KEY = {"udf": "udf", "memory": "mem", "kapacitord": "e2e", "bridge": "bridge", "replicas": "replicas",
              "coalesce": "coalesce",
              "profile": "profile", "keepalive": "keepalive"}

@dataclass(frozen=True)
class Size:
    """Inputs of every section."""

    points: int  # per UDF throughput run (ours)
    official_points: int  # per run of InfluxData's examples (they are slower)
    mem_points: int
    mem_groups: int
    mem_active: int
    e2e_points: int
    bridge_alerts: int
    bridge_ids: Tuple[int, ...]
    drain_sample: int
    prof_points: int
    prof_alerts: int
    ceiling_points: int
    ab_points: int
    transport_requests: int
    keepalive_alerts: int = 10_000  # open Alertmanager alerts re-posted per keep-alive round


#: Full-size inputs (whole run ≈ 8-10 min on 2 busy cores) and smoke-size ones.
FULL = Size(
    points=300_000, official_points=60_000, mem_points=1_000_000, mem_groups=100_000, mem_active=1_000,
    e2e_points=100_000, bridge_alerts=10_000, bridge_ids=(1, 1_000, 100_000), drain_sample=3_000,
    prof_points=200_000, prof_alerts=3_000, ceiling_points=300_000, ab_points=100_000,
    transport_requests=2_000,
)
QUICK = Size(
    points=3_000, official_points=1_000, mem_points=20_000, mem_groups=2_000, mem_active=200,
    e2e_points=2_000, bridge_alerts=300, bridge_ids=(1, 1_000), drain_sample=100,
    prof_points=3_000, prof_alerts=200, ceiling_points=3_000, ab_points=3_000,
    transport_requests=100, keepalive_alerts=300,
)


def _log(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    size = QUICK if args.quick else FULL
    runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    sections = args.sections or list(SECTIONS)
    out_dir: Path = args.out
    json_path = out_dir / "results.json"
    started = time.perf_counter()
    facts = machine_facts()
    shown = "make bench" if not sys.argv[1:] else "python -m bench " + " ".join(sys.argv[1:])
    facts.update(runs=runs, command=shown, quick=bool(args.quick))
    figures: List[Figure] = []
    notes: Dict[str, Any] = {}
    failed: List[str] = []

    provenance: Dict[str, Dict[str, Any]] = {}

    def section(name: str, fn: Callable[[], None], section_runs: Optional[int] = None) -> None:
        t = time.perf_counter()
        _log(f"== {name}")
        # Each section keeps its own run: merged results (--sections) must not borrow
        # another run's command, date or load.
        origin: Dict[str, Any] = {
            "command": shown,
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "runs": runs if section_runs is None else section_runs,
            "quick": bool(args.quick),
        }
        try:
            origin["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
            failed.append(name)
            notes.setdefault("failures", {})[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        origin["seconds"] = round(time.perf_counter() - t, 1)
        provenance[REPORT_KEY[name]] = origin
        _log(f"== {name}: {origin['seconds']:.0f}s")

    if "udf" in sections:
        def udf() -> None:
            from .udf_throughput import driver_ceiling, measure

            sec = measure(runs, size.points, size.official_points, args.official_agent, log=_log)
            figures.extend(sec.figures)
            notes["udf"] = sec.notes
            notes["udf_driver_ceiling"] = driver_ceiling(size.ceiling_points)
        section("udf", udf)
    if "memory" in sections:
        def memory() -> None:
            from .udf_memory import measure

            sec = measure(runs, size.mem_points, size.mem_groups, size.mem_active, log=_log)
            figures.extend(sec.figures)
            notes["mem"] = sec.notes
        section("memory", memory)
    if "kapacitord" in sections:
        def kapacitord() -> None:
            from .kapacitord_e2e import measure

            sec = measure(runs, size.e2e_points, log=_log)
            figures.extend(sec.figures)
            notes["e2e"] = sec.notes
        section("kapacitord", kapacitord)
    if "bridge" in sections:
        def bridge() -> None:
            from .bridge_load import measure

            sec = measure(runs, size.bridge_alerts, size.bridge_ids, size.drain_sample, log=_log)
            figures.extend(sec.figures)
            notes["bridge"] = sec.notes
        section("bridge", bridge)
    if "replicas" in sections:
        def replicas() -> None:
            from .replicas import ALERTS, measure

            sec = measure(runs=replica_runs, alerts=300 if args.quick else ALERTS, log=_log)
            figures.extend(sec.figures)
            notes["replicas"] = sec.notes
        replica_runs = min(runs, 3)  # each run starts ten bridges and a database
        section("replicas", replicas, replica_runs)
    if "coalesce" in sections:
        def coalesce() -> None:
            from .coalesce_drain import measure

            # Full size even with --quick: it is a fake-clock run of a few seconds, and a backlog
            # smaller than one rate-limit window would make both drains take no time at all.
            sec = measure(1, 10_000, 20, log=_log)
            figures.extend(sec.figures)
            notes["coalesce"] = sec.notes
        section("coalesce", coalesce)
    if "profile" in sections:
        def profile() -> None:
            from .profile import profile_bridge, profile_udf, transport_ab, udf_ab

            profs = [profile_udf("alert-state", size.prof_points), *profile_bridge(size.prof_alerts, 1_000, log=_log)]
            notes["profiles"] = [{"what": p["what"], "text": p["text"]} for p in profs]
            notes["udf_ab"] = udf_ab(size.ab_points, repeats=3 if args.quick else 5)
            notes["transport_ab"] = transport_ab(size.transport_requests, repeats=3)
        section("profile", profile)

    if "keepalive" in sections:
        def keepalive() -> None:
            from .keepalive import measure as measure_keepalive

            notes["keepalive"] = measure_keepalive(size.keepalive_alerts, runs)
        section("keepalive", keepalive)

    facts["total_s"] = round(time.perf_counter() - started, 1)
    notes["provenance"] = provenance
    if args.sections and json_path.exists():
        old = load_results(json_path)
        # A re-measured section replaces all its old figures (keys may have changed).
        fresh = {f.key.split(".")[0] for f in figures}
        figures = merge_results([f for f in old["figures"] if f.key.split(".")[0] not in fresh], figures)
        notes = merge_notes(old.get("notes", {}), notes)
        # Machine facts are this run's; what ran when is per section (notes["provenance"]).
        facts = {**old.get("facts", {}), **facts}
    save_results(json_path, facts, figures, notes)
    from .report import render

    render(json_path, out_dir)
    _log(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.png'} ({facts['total_s'] / 60:.1f} min)")
    if failed:
        _log(f"FAILED sections: {', '.join(failed)}")
        return 1
    return 0


def merge_notes(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """New notes replace old ones per key; provenance is merged per section, so a section
    not re-measured keeps the command, date and load of the run that measured it."""
    merged = {**old, **new}
    merged["provenance"] = {**old.get("provenance", {}), **new.get("provenance", {})}
    return merged


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-agent", type=Path, metavar="DIR",
                   help="local checkout of github.com/influxdata/kapacitor (the comparison anchor)")
    p.add_argument("--runs", type=int, help="runs per figure (default 5; 1 with --quick)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, help="only these (merged into the last results)")
    p.add_argument("--quick", action="store_true", help="tiny inputs: a smoke run, not a measurement")
    p.add_argument("--out", type=Path, default=BENCH_DIR, help="where results.md/.png go (default bench/)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
