"""Storm + crash: 10,000 alerts, a flaky platform, five kill -9s, and nothing lost.

The engine (posting, killing, the ledger) lives in :mod:`tests.reliability.soak`,
so the normal run here and the long soak (``python -m tests.reliability.soak
--kills 200``) check exactly the same books.
"""

from __future__ import annotations

from pathlib import Path

from .soak import Ledger, StormConfig, plan_events, run_storm


def _show(ledger: Ledger) -> str:
    text = ledger.to_markdown()
    print(text)  # kept by pytest: visible with -s or on failure
    return text


class TestPlan:
    """The storm's event plan itself."""

    def test_plan_mixes_trigger_repeat_and_recover(self) -> None:
        """Every id walks real transitions: triggers, repeats, escalations and recoveries."""
        plan = plan_events(10_000, 1_000, seed=3)
        assert len({p.id for p in plan}) == 1_000
        kinds = {
            "trigger": sum(p.previous == "OK" and p.level != "OK" for p in plan),
            "repeat": sum(p.previous == p.level != "OK" for p in plan),
            "change": sum("OK" not in (p.previous, p.level) and p.previous != p.level for p in plan),
            "recover": sum(p.previous != "OK" and p.level == "OK" for p in plan),
        }
        assert all(count > 1_000 for count in kinds.values()), kinds


class TestStorm:
    """The bridge under load, failures and crashes."""

    def test_storm_with_crashes_loses_nothing(self, tmp_path: Path) -> None:
        """10,000 alerts over 1,000 ids, 30 % platform failures, 5 kill -9s: the books balance."""
        cfg = StormConfig()
        ledger = run_storm(cfg, tmp_path)
        text = _show(ledger)
        assert ledger.kills == cfg.kills, text
        assert ledger.accepted == cfg.alerts, text  # every valid event is eventually accepted
        assert ledger.refused_by_bridge == 0 and ledger.gave_up == 0, text
        assert ledger.lost == 0, text
        assert ledger.delivered == ledger.accepted, text  # no dead letters with max_age 24h
        assert ledger.order_violations == 0, text
        assert ledger.final_state_mismatches == 0, text
        assert ledger.corrupted_bodies == 0 and ledger.stored_not_final == 0, text
        assert ledger.receiver_failures_injected > 0.2 * ledger.receiver_requests, text
        # At-least-once: duplicates exist, are counted, and stay a small fraction.
        assert ledger.duplicates == ledger.duplicates_from_reposts + ledger.duplicates_from_redelivery, text
        assert ledger.duplicates_from_redelivery <= cfg.kills * 2 * cfg.workers, text
        assert ledger.duplicate_fraction <= 0.05, text
        assert ledger.balanced, text

    def test_repeat_suppression_survives_crashes(self, tmp_path: Path) -> None:
        """With repeat_interval 1h, repeats are booked as suppressed, never a level change."""
        cfg = StormConfig(alerts=2_000, ids=200, kills=2, repeat_interval="1h", seed=11)
        ledger = run_storm(cfg, tmp_path)
        text = _show(ledger)
        assert ledger.suppressed > 0, text
        assert ledger.wrong_suppressions == 0, text
        assert ledger.lost == 0 and ledger.final_state_mismatches == 0, text
        assert ledger.balanced, text
