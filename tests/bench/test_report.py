"""bench/results.md tells the truth about where each figure came from, and states no
fact that is not in the measured results."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

from bench.__main__ import merge_notes
from bench.common import Figure, merge_results
from bench.report import FINDINGS, NOT_MEASURED, write_markdown

FACTS = {"cpu_model": "Test CPU", "cores": 2, "when": "2026-12-01 15:00:00 UTC", "runs": 5, "python": "3.11"}


def run_a() -> Dict[str, Any]:
    figs = [
        Figure("udf.alert-state-g100", "udf", "ours: alert-state", "points/s", [200_000.0, 210_000.0],
               command="python -m bench", extra={"other_cpu": [0.4, 0.6]}),
        Figure("bridge.accept.ids1", "bridge", "accepted alerts/s", "alerts/s", [6000.0], command="python -m bench",
               extra={"other_cpu": [1.2]}),
    ]
    notes = {
        "udf_driver_ceiling": 1_000_000.0,
        "provenance": {
            "udf": {"command": "python -m bench", "when": "2026-11-30 10:00:00 UTC", "runs": 5,
                    "loadavg_at_start": [0.5, 0.4, 0.3], "seconds": 120.0},
            "bridge": {"command": "python -m bench", "when": "2026-11-30 10:02:00 UTC", "runs": 5,
                       "loadavg_at_start": [0.9, 0.5, 0.3], "seconds": 180.0},
        },
    }
    return {"facts": dict(FACTS), "figures": figs, "notes": notes}


def section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


class TestProvenance:
    def test_merged_sections_keep_their_own_run(self, tmp_path: Path) -> None:
        """After --sections bridge, the UDF section still names the earlier run, the bridge one the new."""
        old = run_a()
        new_figs = [Figure("bridge.accept.ids1", "bridge", "accepted alerts/s", "alerts/s", [7000.0],
                           command="python -m bench --sections bridge")]
        new_notes = {"provenance": {"bridge": {"command": "python -m bench --sections bridge",
                                                "when": "2026-12-01 09:00:00 UTC", "runs": 3,
                                                "loadavg_at_start": [1.5, 1.0, 0.8], "seconds": 60.0}}}
        notes = merge_notes(old["notes"], new_notes)
        data = {"facts": FACTS, "figures": merge_results(old["figures"], new_figs), "notes": notes}
        out = tmp_path / "results.md"
        write_markdown(data, out)
        text = out.read_text()
        assert "merge several runs" in text.split("## Machine", 1)[0]
        udf = section(text, "UDF throughput")
        assert "`python -m bench` on 2026-11-30 10:00:00 UTC" in udf and "0.50, 0.40, 0.30" in udf
        bridge = section(text, "Bridge")
        assert "`python -m bench --sections bridge` on 2026-12-01 09:00:00 UTC (3 runs" in bridge
        assert "1.50, 1.00, 0.80" in bridge and "2026-11-30" not in bridge

    def test_single_run_header(self, tmp_path: Path) -> None:
        """One run: the header names it once; a section without a record says so instead of guessing."""
        data = run_a()
        data["notes"]["provenance"]["bridge"]["when"] = data["notes"]["provenance"]["udf"]["when"]
        out = tmp_path / "results.md"
        write_markdown(data, out)
        assert "Written by `python -m bench` on 2026-11-30 10:00:00 UTC." in out.read_text()
        del data["notes"]["provenance"]["bridge"]
        write_markdown(data, out)
        text = out.read_text()
        assert "merge several runs" in text and "Run of origin not recorded" in section(text, "Bridge")


class TestStatedFacts:
    def test_sentences_follow_the_figures(self, tmp_path: Path) -> None:
        """The driver-ceiling ratio and the other-load range are computed from the results."""
        out = tmp_path / "results.md"
        write_markdown(run_a(), out)
        text = out.read_text()
        assert "1,000,000 frames/s**, 4.9× the fastest UDF figure below (205,000 points/s)" in text
        assert "Other processes used 0.50–1.20 cores" in text
        assert "not the bottleneck" not in text and "other engineers" not in text

    def test_gains_come_from_the_ab_tables(self, tmp_path: Path) -> None:
        """Without A/B tables the findings claim no gain; with them, the numbers are the tables'."""
        out = tmp_path / "results.md"
        write_markdown(run_a(), out)
        rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| bridge/transport.py") or ln.startswith("| udf/agent.py")]
        assert len(rows) == len(FINDINGS) and all(NOT_MEASURED in r for r in rows)
        data = run_a()
        data["notes"]["transport_ab"] = [
            {"variant": "bridge Transport.send (urllib3 pool)", "us": 300.0},
            {"variant": "requests session, trust_env=True (requests' default)", "us": 700.0},
            {"variant": "urllib3 PoolManager.request, preload_content=False", "us": 250.0},
        ]
        data["notes"]["udf_ab"] = [{"variant": "current udf/ code", "us": 4.0}, {"variant": "fused", "us": 3.0}]
        write_markdown(data, out)
        text = out.read_text()
        assert "`Transport.send`: 300 µs CPU per request; requests session, trust_env=True (requests' default): 700 µs (difference +400 µs" in text
        assert "urllib3 PoolManager.request, preload_content=False: 250 µs (difference -50 µs" in text
        assert "against the current code (4.00 µs/point): fused: -25.0%" in text

    def test_no_typed_in_figures(self) -> None:
        """The findings' prose carries no measured-looking number (µs, %, ×): those come from results."""
        prose: List[str] = [str(v) for fd in FINDINGS for k, v in fd.items() if k in ("evidence", "change", "status")]
        for text in prose:
            assert not re.search(r"\d\s*(µs|%|×)", text), text
