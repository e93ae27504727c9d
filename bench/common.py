"""What every benchmark shares: figures, statistics, machine facts, subprocess helpers.

A :class:`Figure` is one measured quantity with all its runs, the command that
reproduces it and the target it is judged against. Sections return figures; the
report (:mod:`bench.report`) only renders them, so a figure can be re-measured
alone and merged into ``bench/results.json``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

__all__ = [
    "BENCH_DIR",
    "Log",
    "PYTHON",
    "REPO_ROOT",
    "WORK_DIR",
    "Figure",
    "load_results",
    "machine_busy",
    "machine_facts",
    "merge_results",
    "protobuf_backend",
    "repo_env",
    "save_results",
    "stopwatch",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
#: Scratch space (git-ignored): raw JSON, profiles, kapacitord and bridge data dirs.
#: ``BENCH_WORK_DIR`` moves it (the smoke test runs beside a real benchmark).
WORK_DIR = Path(os.environ.get("BENCH_WORK_DIR") or BENCH_DIR / ".work")
#: The interpreter that runs the benchmark also runs every UDF under test.
PYTHON = sys.executable
#: Progress lines go through one of these (``print`` by default).
Log = Callable[[str], None]


@dataclass
class Figure:
    """One measured quantity: every run's value, how to reproduce it, what it must reach."""

    key: str
    section: str
    label: str
    unit: str
    values: List[float] = field(default_factory=list)
    command: str = ""
    target: str = ""
    #: Target check on the median: "ge" (≥ threshold), "le" (≤), or "" (no target).
    compare: str = ""
    threshold: Optional[float] = None
    notes: str = ""
    #: Side measurements per run (CPU shares, RSS, ...), keyed by name.
    extra: Dict[str, List[float]] = field(default_factory=dict)

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.values) if self.values else None

    @property
    def minimum(self) -> Optional[float]:
        return min(self.values) if self.values else None

    @property
    def maximum(self) -> Optional[float]:
        return max(self.values) if self.values else None

    @property
    def met(self) -> Optional[bool]:
        """Whether the median reaches the target; ``None`` without a target or values."""
        m = self.median
        if m is None or self.threshold is None or not self.compare:
            return None
        return m >= self.threshold if self.compare == "ge" else m <= self.threshold

    def spread(self) -> Tuple[float, float, float]:
        """(median, median - min, max - median): bar height and error bars."""
        if not self.values:
            raise ValueError(f"{self.key} has no values")
        med = statistics.median(self.values)
        return med, med - min(self.values), max(self.values) - med

    def add_extra(self, name: str, value: float) -> None:
        self.extra.setdefault(name, []).append(value)

    def extra_median(self, name: str) -> Optional[float]:
        vals = self.extra.get(name)
        return statistics.median(vals) if vals else None

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Figure":
        return cls(**data)


def stopwatch() -> Callable[[], float]:
    """Seconds since the call, on the monotonic high-resolution clock."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores together).

    The difference over a run, minus what the measured processes used, is what
    other processes took: the noise figure of that run.
    """
    import psutil  # type: ignore[import-untyped]

    t = psutil.cpu_times()
    return float(
        t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
    )


def repo_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for a child that must import this working tree (``udf``, ``bridge``)."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env.setdefault("UDF_LOG_LEVEL", "warning")
    if extra:
        env.update(extra)
    return env


_BACKEND_PROBE = (
    "import sys, json, importlib\n"
    "for m in sys.argv[1:]: importlib.import_module(m)\n"
    "import google.protobuf as g\n"
    "from google.protobuf.internal import api_implementation as a\n"
    "print(json.dumps({'backend': a.Type(), 'version': g.__version__}))\n"
)


def protobuf_backend(
    env: Dict[str, str], modules: Iterable[str] = (), python: str = PYTHON
) -> Dict[str, str]:
    """Protobuf backend and version as seen inside a child interpreter.

    The child gets the same interpreter, environment and ``PYTHONPATH`` as the UDF
    it stands for and first imports that UDF's modules (its generated ``_pb2``
    included), so what it prints is what the UDF runs on.
    """
    proc = subprocess.run(
        [python, "-c", _BACKEND_PROBE, *modules],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        return {"backend": "error", "version": proc.stderr.strip().splitlines()[-1:][0] if proc.stderr else "?"}
    result: Dict[str, str] = json.loads(proc.stdout)
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> Dict[str, Any]:
    """Cores, CPU model, OS, Python and protobuf: the context every figure needs."""
    import google.protobuf
    from google.protobuf.internal import api_implementation

    facts: Dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "protobuf": google.protobuf.__version__,
        "protobuf_backend": api_implementation.Type(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    try:
        facts["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import psutil

        facts["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return facts


def save_results(path: Path, facts: Dict[str, Any], figures: List[Figure], notes: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"facts": facts, "figures": [f.to_json() for f in figures], "notes": notes}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def load_results(path: Path) -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data["figures"] = [Figure.from_json(f) for f in data.get("figures", [])]
    return data


def merge_results(old: List[Figure], new: List[Figure]) -> List[Figure]:
    """Figures of ``new`` replace those of ``old`` with the same key; order is kept."""
    by_key = {f.key: f for f in new}
    merged = [by_key.pop(f.key, f) for f in old]
    merged.extend(f for f in new if f.key in by_key)
    return merged
