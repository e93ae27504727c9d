"""UDF throughput over pipes (and a unix socket): ours against InfluxData's examples.

Every subject is a real UDF process spoken to by :mod:`bench.driver` exactly as
kapacitord speaks to it (Info, Init, then point frames with keepalives
interleaved). Runs are interleaved round by round (ours, theirs, ours, ...) so a
noisy neighbour slows both sides of a comparison alike; ratios are taken per
round, then the median.

    .venv/bin/python -m bench.udf_throughput [--official-agent DIR] [--runs 5] [--only KEY ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from udf import udf_pb2 as pb
from udf.client import Duration, option

from .common import PYTHON, Figure, Log, protobuf_backend, repo_env
from .driver import Session, Subject
from .official import Anchor, AnchorError, prepare
from .workload import FIELD, Workload

__all__ = ["ALERT_OPTIONS", "Section", "measure", "ours_alert_state", "main"]

SECTION = "UDF throughput (driver over pipes/socket, no kapacitord)"
CMD = ".venv/bin/python -m bench.udf_throughput"

#: tick/cpu_alert_state.tick's options: what an operator would really run.
ALERT_OPTIONS: List[pb.Option] = [
    option("field", FIELD),
    option("warn", 70.0),
    option("crit", 90.0),
    option("critReset", 80.0),
    option("for", Duration.seconds(60)),
]
MOVING_AVG_OPTIONS: List[pb.Option] = [option("field", FIELD), option("size", 10), option("as", "avg")]


@dataclass
class Section:
    figures: List[Figure]
    notes: Dict[str, object] = field(default_factory=dict)


@dataclass
class Case:
    """A subject with its workload; one figure."""

    key: str
    subject: Subject
    points: int
    groups: int
    target: str = ""
    compare: str = ""
    threshold: Optional[float] = None
    int_field: bool = False


@lru_cache(maxsize=4)
def _frames(points: int, groups: int, int_field: bool = False) -> Tuple[bytes, ...]:
    return tuple(Workload(points, groups, int_field=int_field).frames())


def ours_alert_state(options: Sequence[pb.Option] = ALERT_OPTIONS) -> Subject:
    return Subject(
        key="alert-state",
        label="ours: alert-state",
        argv=[PYTHON, "-m", "udf.alert_state"],
        env=repo_env(),
        options=list(options),
        annotated=("fieldsString", "alert_level"),
        shown="python -m udf.alert_state",
    )


def _our_subjects() -> Dict[str, Subject]:
    env = repo_env()
    return {
        "mirror": Subject(
            key="mirror",
            label="ours: mirror (parses each point), stdio",
            argv=[PYTHON, "-m", "udf.mirror"],
            env=env,
            shown="python -m udf.mirror",
        ),
        "mirror-raw": Subject(
            key="mirror-raw",
            label="ours: mirror --raw (no parse), stdio",
            argv=[PYTHON, "-m", "udf.mirror", "--raw"],
            env=env,
            shown="python -m udf.mirror --raw",
        ),
        "mirror-socket": Subject(
            key="mirror-socket",
            label="ours: mirror (parses each point), unix socket",
            argv=[PYTHON, "-m", "udf.mirror", "--socket"],
            env=env,
            socket=True,
            shown="python -m udf.mirror --socket PATH",
        ),
    }


def _official_subjects(anchor: Anchor) -> Dict[str, Subject]:
    import signal

    env = anchor.env()
    return {
        "official-mirror": Subject(
            key="official-mirror",
            label="InfluxData mirror.py (socket server), unix socket",
            argv=[PYTHON, "-u", str(anchor.mirror)],
            env=env,
            socket=True,
            stop_signal=signal.SIGINT,
            shown=f"python -u {anchor.mirror.relative_to(anchor.checkout)} PATH",
        ),
        "official-moving-avg": Subject(
            key="official-moving-avg",
            label="InfluxData moving_avg.py (field, size 10, as), stdio",
            argv=[PYTHON, "-u", str(anchor.moving_avg)],
            env=env,
            options=MOVING_AVG_OPTIONS,
            annotated=("fieldsDouble", "avg"),
            shown=f"python -u {anchor.moving_avg.relative_to(anchor.checkout)}",
        ),
    }


def build_cases(points: int, official_points: int, anchor: Optional[Anchor]) -> List[Case]:
    ours = _our_subjects()
    alert = ours_alert_state()
    cases = [
        Case("mirror", ours["mirror"], points, 100, "≥ 200,000 points/s (issue 3)", "ge", 200_000),
        Case("mirror-raw", ours["mirror-raw"], points, 100),
        Case("mirror-socket", ours["mirror-socket"], points, 100),
        Case("alert-state-g1", alert, points, 1),
        Case("alert-state-g100", alert, points, 100, "≥ 220,000 points/s (issue 4)", "ge", 220_000),
        Case("alert-state-g10k", alert, points, 10_000),
        Case("alert-state-int-g100", alert, points, 100, int_field=True),
    ]
    if anchor is not None:
        theirs = _official_subjects(anchor)
        cases += [
            Case("official-mirror", theirs["official-mirror"], official_points, 100),
            Case("official-moving-avg-g100", theirs["official-moving-avg"], official_points, 100),
        ]
    return cases


_LABEL_SUFFIX = {
    "alert-state-g1": ", 1 group",
    "alert-state-g100": ", 100 groups",
    "alert-state-g10k": ", 10k groups",
    "alert-state-int-g100": ", 100 groups, the field as an integer (fieldsInt)",
}
#: (numerator, denominator, label, target text, threshold)
RATIOS: List[Tuple[str, str, str, str, Optional[float]]] = [
    (
        "alert-state-g100",
        "official-moving-avg-g100",
        "ours alert-state ÷ InfluxData moving_avg.py (100 groups, same run)",
        "≥ 2× (issue 4)",
        2.0,
    ),
    (
        "mirror-socket",
        "official-mirror",
        "ours mirror ÷ InfluxData mirror.py (both parse, both over a unix socket)",
        "≥ 2× (issue 8)",
        2.0,
    ),
    ("mirror-raw", "official-mirror", "ours mirror --raw (stdio) ÷ InfluxData mirror.py (socket)", "", None),
]
#: Same shape, compared by UDF CPU per point (den's µs ÷ num's µs: above 1 means num is cheaper),
#: for two runs of our own UDF whose rates a busy machine disturbs more than their CPU cost.
CPU_RATIOS: List[Tuple[str, str, str, str, Optional[float]]] = [
    (
        "alert-state-int-g100",
        "alert-state-g100",
        "ours alert-state: CPU per point, double field ÷ integer field (100 groups, same run)",
        "≥ 0.9× (issue 12.1: ints no longer ~26 % dearer)",
        0.9,
    ),
]


def measure(
    runs: int = 5,
    points: int = 300_000,
    official_points: int = 60_000,
    official_agent: Optional[Path] = None,
    only: Optional[Sequence[str]] = None,
    log: Log = print,
) -> Section:
    anchor: Optional[Anchor] = None
    notes: Dict[str, object] = {}
    if official_agent is not None:
        try:
            anchor = prepare(Path(official_agent))
        except AnchorError as exc:
            notes["anchor_error"] = str(exc)
            log(f"  official agent unusable: {exc}")
    try:
        return _measure(runs, points, official_points, anchor, only, notes, official_agent, log)
    finally:
        if anchor is not None:
            anchor.cleanup()


def _measure(
    runs: int,
    points: int,
    official_points: int,
    anchor: Optional[Anchor],
    only: Optional[Sequence[str]],
    notes: Dict[str, object],
    official_agent: Optional[Path],
    log: Log,
) -> Section:
    cases = [c for c in build_cases(points, official_points, anchor) if not only or c.key in only]
    ours_backend = protobuf_backend(repo_env(), ["udf.agent", "udf.alert_state", "udf.mirror"])
    notes["backend_ours"] = ours_backend
    if anchor is not None:
        notes["anchor"] = {
            "checkout": str(anchor.checkout),
            "commit": anchor.commit,
            "describe": anchor.describe,
            "moving_avg": str(anchor.moving_avg.relative_to(anchor.checkout)),
            "mirror": str(anchor.mirror.relative_to(anchor.checkout)),
            "their_udf_pb2_gencode": anchor.original_gencode,
            "regenerated_gencode": anchor.regenerated_gencode,
            "protoc": anchor.protoc,
        }
        notes["backend_official"] = protobuf_backend(anchor.env(), ["kapacitor.udf.agent", "kapacitor.udf.udf_pb2"])
    else:
        notes["anchor"] = None
    agent_arg = f" --official-agent {official_agent}" if official_agent else ""
    figures: Dict[str, Figure] = {}
    for c in cases:
        n = c.points
        figures[c.key] = Figure(
            key=f"udf.{c.key}",
            section=SECTION,
            label=c.subject.label + _LABEL_SUFFIX.get(c.key, f", {c.groups} groups"),
            unit="points/s",
            command=f"{CMD} --only {c.key} --runs {runs} --points {points}"
            + (f" --official-points {official_points}{agent_arg}" if c.key.startswith("official") else "")
            + f"   # UDF: {c.subject.shown}; {n:,} points, {c.groups} groups",
            target=c.target,
            compare=c.compare,
            threshold=c.threshold,
        )
    for r in range(runs):
        for c in cases:
            frames = _frames(c.points, c.groups, c.int_field)
            w = Workload(c.points, c.groups, int_field=c.int_field)
            with Session(c.subject) as s:
                s.handshake()
                res = s.run(frames, c.points, w.keepalives)
            f = figures[c.key]
            f.values.append(round(res.rate, 1))
            f.add_extra("udf_cpu", round(res.udf_cpu, 3))
            f.add_extra("driver_cpu", round(res.driver_cpu, 3))
            f.add_extra("other_cpu", round(res.other_cpu, 3))
            f.add_extra("udf_us_per_point", round(res.udf_cpu * res.seconds / res.points * 1e6, 2))
            if res.udf_cpu > 0:
                f.add_extra("points_per_cpu_s", round(res.points / (res.udf_cpu * res.seconds), 1))
            log(f"  round {r + 1}/{runs} {c.key:26s} {res.rate:>10,.0f} points/s  "
                f"udf cpu {res.udf_cpu:4.0%} ({res.udf_cpu * res.seconds / res.points * 1e6:.1f} µs/point)  "
                f"driver cpu {res.driver_cpu:4.0%}  other processes {res.other_cpu:4.0%}")
    out = list(figures.values())
    for num, den, label, target, thr in RATIOS:
        if num in figures and den in figures:
            a, b = figures[num].values, figures[den].values
            ratio = Figure(
                key=f"udf.ratio.{num}.vs.{den}",
                section=SECTION,
                label=label,
                unit="×",
                values=[round(x / y, 2) for x, y in zip(a, b)],
                command=f"{CMD} --only {num} {den} --runs {runs} --points {points} "
                f"--official-points {official_points}{agent_arg}",
                target=target,
                compare="ge" if thr else "",
                threshold=thr,
                notes="per-round ratio (both measured back to back in the same round)",
            )
            a_us = figures[num].extra.get("udf_us_per_point", [])
            b_us = figures[den].extra.get("udf_us_per_point", [])
            ratio.extra["cpu_ratio"] = [round(y / x, 2) for x, y in zip(a_us, b_us) if x > 0]
            out.append(ratio)
    for num, den, label, target, thr in CPU_RATIOS:
        if num in figures and den in figures:
            a_us = figures[num].extra.get("udf_us_per_point", [])
            b_us = figures[den].extra.get("udf_us_per_point", [])
            out.append(Figure(
                key=f"udf.cpu-ratio.{num}.vs.{den}",
                section=SECTION,
                label=label,
                unit="×",
                values=[round(y / x, 2) for x, y in zip(a_us, b_us) if x > 0],
                command=f"{CMD} --only {num} {den} --runs {runs} --points {points}",
                target=target,
                compare="ge" if thr else "",
                threshold=thr,
                notes="per-round ratio of UDF CPU µs/point (both measured back to back in the same round)",
            ))
    if anchor is None:
        notes["comparison"] = (
            "not made: no --official-agent DIR given (a checkout of github.com/influxdata/kapacitor)"
            if official_agent is None
            else f"not made: {notes.get('anchor_error')}"
        )
    return Section(out, notes)


def driver_ceiling(points: int = 300_000, runs: int = 3) -> float:
    """Frames/s the driver handles when the "UDF" is ``cat`` (every frame echoed at once)."""
    frames = _frames(points, 100)
    w = Workload(points, 100)
    subject = Subject(key="cat", label="cat", argv=["cat"], env=repo_env())
    rates = []
    for _ in range(runs):
        with Session(subject) as s:
            rates.append(s.run(frames, points, w.keepalives).rate)
    return round(statistics.median(rates), 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--official-agent", type=Path, metavar="DIR", help="checkout of influxdata/kapacitor")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--points", type=int, default=300_000, help="points per run for our UDFs")
    p.add_argument("--official-points", type=int, default=60_000, help="points per run for InfluxData's")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--only", nargs="+", metavar="KEY", help="case keys, e.g. alert-state-g100 official-moving-avg-g100")
    args = p.parse_args(argv)
    sec = measure(args.runs, args.points, args.official_points, args.official_agent, args.only)
    for f in sec.figures:
        print(f"{f.key:55s} median {f.median:>12,.2f} {f.unit}  min {f.minimum:,.2f}  max {f.maximum:,.2f}"
              + (f"  target {f.target}: {'met' if f.met else 'NOT met'}" if f.target else ""))
    for k, v in sec.notes.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
