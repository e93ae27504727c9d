"""``@alertState().changesOnly()`` and the misspelled-field warning, through a real kapacitord.

The shipped ``tick/cpu_alert_state.tick`` with ``.changesOnly()`` added: only the points whose
level changed leave the UDF, so ``httpOut('annotated')`` and the alert branch see the changes
of a spike and nothing else, and the alert node triggers exactly as without the option.
"""

from __future__ import annotations

import pytest

from tests.e2e.kapacitord import Kapacitord
from tests.e2e.test_udf_e2e import DBRP, SPIKE, TASK, iso, node, point, replace_once, start_task, tick_text


pytestmark = pytest.mark.e2e




class TestChangesOnly:
    def test_only_changes_leave_the_udf(self, kapacitord: Kapacitord) -> None:
        """12 points of a spike in, its 4 changes out, annotated; the alert node triggers as without it."""
        start_task(kapacitord, replace_once(tick_text(), ".for(1m)", ".for(1m)\n        .changesOnly()"))
        kapacitord.write(*DBRP, [point(offset, value) for (offset, value), _ in SPIKE], precision="ms")
        task = kapacitord.wait_task(
            TASK, lambda t: node(t, r"where\d+")["collected"] >= 4 and node(t, r"alert\d+")["collected"] >= 4
        )
        assert node(task, r"alertState\d+")["collected"] == len(SPIKE)
        assert node(task, r"http_out\d+")["collected"] == 4
        assert node(task, r"where\d+")["collected"] == 4
        alert = node(task, r"alert\d+")
        assert (alert["warns_triggered"], alert["crits_triggered"], alert["oks_triggered"]) == (2, 1, 1)
        assert {n: s["errors"] for n, s in task["stats"]["node-stats"].items() if s["errors"]} == {}
        # The last change (OK at +300 s) is what httpOut holds, with its annotation.
        (series,) = kapacitord.http_out(TASK, "annotated")["series"]
        row = dict(zip(series["columns"], series["values"][-1]))
        assert row["time"] == iso(300)
        assert (row["alert_level"], row["alert_previous_level"], row["alert_changed"]) == ("OK", "WARNING", True)
        assert row["usage_user"] == 40.0 and row["usage_system"] == 2.5


class TestFieldNotSeen:
    def test_warning_is_a_udf_log_line_in_kapacitords_log(self, kapacitord: Kapacitord) -> None:
        """A misspelled .field(): after 1000 points without it, kapacitord logs the UDF's warning once."""
        start_task(kapacitord, replace_once(tick_text(), ".field('usage_user')", ".field('usage_usr')"))
        kapacitord.write(*DBRP, [point(i, 50.0) for i in range(1000)], precision="ms")
        kapacitord.wait_task(TASK, lambda t: node(t, r"http_out\d+")["collected"] >= 1000, timeout=30)
        kapacitord.wait_for(
            kapacitord.log_text, lambda text: "alert_state.field_not_seen" in text, 10, what="the UDF's warning"
        )
        lines = [ln for ln in kapacitord.log_text().splitlines() if "alert_state.field_not_seen" in ln]
        assert len(lines) == 1, lines
        assert 'msg="UDF log"' in lines[0]
        assert "usage_usr" in lines[0] and "usage_system,usage_user" in lines[0]
