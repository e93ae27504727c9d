"""Tests for udf.state: the pure alert state machine, group expiry and snapshots."""

from __future__ import annotations

import math
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udf.options import LEVEL_NAMES, parse_options
from udf.state import (
    NO_TIME,
    SNAPSHOT_MAGIC,
    SNAPSHOT_VERSION,
    Evaluator,
    GroupState,
    Groups,
    Snapshot,
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
)

S = 1_000_000_000
OK, INFO, WARNING, CRITICAL = 0, 1, 2, 3
Option = Tuple[str, Sequence[object]]


def evaluator(*extra: Option) -> Evaluator:
    return Evaluator(parse_options([("field", ["v"]), *extra]))


def ann(s: GroupState) -> Tuple[str, bool, str, int, float, str, bool]:
    """The fields the handler writes: level, changed, previous, count, duration, pending, flapping."""
    pending = LEVEL_NAMES[s.pending] if s.pending >= 0 else ""
    return (LEVEL_NAMES[s.level], s.changed, LEVEL_NAMES[s.previous], s.count, s.duration_s, pending, s.flapping)


def run(ev: Evaluator, points: Sequence[Tuple[float, float]], s: Optional[GroupState] = None) -> List[Tuple[str, bool, str, int, float, str, bool]]:
    """Feed (seconds, value) points to one group; return each point's annotation."""
    s = ev.new_state() if s is None else s
    out = []
    for t, v in points:
        ev.update(s, float(v), int(t * S))
        out.append(ann(s))
    return out


def levels(ev: Evaluator, values: Sequence[float], step_s: float = 10) -> List[str]:
    return [a[0] for a in run(ev, [(i * step_s, v) for i, v in enumerate(values)])]


class TestThresholds:
    def test_above_levels(self) -> None:
        """Each threshold maps values strictly above it, the highest matching level wins."""
        ev = evaluator(("info", [50.0]), ("warn", [70.0]), ("crit", [90.0]))
        assert levels(ev, [10, 60, 80, 95, 10]) == ["OK", "INFO", "WARNING", "CRITICAL", "OK"]

    def test_boundaries_are_strict(self) -> None:
        """A value equal to a threshold is not at that level."""
        ev = evaluator(("info", [50.0]), ("warn", [70.0]), ("crit", [90.0]))
        assert levels(ev, [50, 50.000001, 70, 70.5, 90, 90.5]) == ["OK", "INFO", "INFO", "WARNING", "WARNING", "CRITICAL"]

    def test_unset_levels_are_skipped(self) -> None:
        """With only crit set, everything at or below crit is OK."""
        ev = evaluator(("crit", [90.0]))
        assert levels(ev, [89, 1e9, -5]) == ["OK", "CRITICAL", "OK"]

    def test_below_mirrors_above(self) -> None:
        """In below mode values strictly below a threshold are at that level."""
        ev = evaluator(("below", []), ("info", [30.0]), ("warn", [20.0]), ("crit", [10.0]))
        assert levels(ev, [31, 30, 29, 20, 19, 10, 9, 50]) == ["OK", "OK", "INFO", "INFO", "WARNING", "WARNING", "CRITICAL", "OK"]

    def test_equal_thresholds_highest_wins(self) -> None:
        """With warn == crit the higher level wins and WARNING is never reached."""
        ev = evaluator(("warn", [90.0]), ("crit", [90.0]))
        assert levels(ev, [91, 90, 91]) == ["CRITICAL", "OK", "CRITICAL"]

    def test_nan_is_ok(self) -> None:
        """A NaN value matches no threshold, as a Kapacitor lambda would."""
        ev = evaluator(("crit", [90.0]))
        assert levels(ev, [95, math.nan]) == ["CRITICAL", "OK"]

    def test_classify_matches_update(self) -> None:
        """classify() gives the candidate that update() then enters without waits."""
        ev = evaluator(("warn", [70.0]), ("crit", [90.0]), ("critReset", [80.0]))
        assert [ev.classify(v, CRITICAL) for v in (95, 85, 80, 79, 50)] == [CRITICAL, CRITICAL, CRITICAL, WARNING, OK]
        assert [ev.classify(v, OK) for v in (95, 85, 50)] == [CRITICAL, WARNING, OK]


class TestResets:
    def test_crit_reset_holds_until_strictly_below(self) -> None:
        """CRITICAL holds down to the reset value and leaves only strictly below it."""
        ev = evaluator(("warn", [70.0]), ("crit", [90.0]), ("critReset", [80.0]))
        assert levels(ev, [95, 85, 80, 79.9]) == ["CRITICAL", "CRITICAL", "CRITICAL", "WARNING"]

    def test_reset_then_value_decides(self) -> None:
        """Once released, the value's own level applies, even OK in one step."""
        ev = evaluator(("warn", [70.0]), ("crit", [90.0]), ("critReset", [80.0]))
        assert levels(ev, [95, 40]) == ["CRITICAL", "OK"]

    def test_warn_reset(self) -> None:
        """warnReset keeps WARNING below warn until the value drops under it."""
        ev = evaluator(("warn", [70.0]), ("warnReset", [60.0]), ("crit", [90.0]))
        assert levels(ev, [75, 65, 60, 59, 65]) == ["WARNING", "WARNING", "WARNING", "OK", "OK"]

    def test_info_reset(self) -> None:
        """infoReset keeps INFO until the value drops under it."""
        ev = evaluator(("info", [50.0]), ("infoReset", [40.0]))
        assert levels(ev, [55, 45, 39]) == ["INFO", "INFO", "OK"]

    def test_reset_does_not_block_escalation(self) -> None:
        """A held level still escalates; from CRITICAL, warnReset holds nothing (as in Kapacitor)."""
        ev = evaluator(("warn", [70.0]), ("warnReset", [50.0]), ("crit", [90.0]))
        assert levels(ev, [75, 60, 95, 60]) == ["WARNING", "WARNING", "CRITICAL", "OK"]

    def test_reset_of_other_level_ignored(self) -> None:
        """critReset does not hold WARNING: only the current level's reset applies."""
        ev = evaluator(("warn", [70.0]), ("crit", [90.0]), ("critReset", [20.0]))
        assert levels(ev, [75, 50]) == ["WARNING", "OK"]

    def test_below_reset(self) -> None:
        """In below mode a reset holds the level until the value rises strictly above it."""
        ev = evaluator(("below", []), ("crit", [10.0]), ("critReset", [15.0]))
        assert levels(ev, [5, 12, 15, 15.1]) == ["CRITICAL", "CRITICAL", "CRITICAL", "OK"]

    def test_nan_keeps_held_level(self) -> None:
        """NaN releases no reset (Kapacitor's reset lambda is false), so the level holds."""
        ev = evaluator(("crit", [90.0]), ("critReset", [80.0]))
        assert levels(ev, [95, math.nan, 70]) == ["CRITICAL", "CRITICAL", "OK"]


class TestAnnotation:
    def test_first_point_ok_is_not_a_change(self) -> None:
        """A group's first point at OK: not changed, count 1, duration 0, previous OK."""
        assert run(evaluator(("crit", [90.0])), [(100, 5)]) == [("OK", False, "OK", 1, 0.0, "", False)]

    def test_first_point_alerting_is_a_change(self) -> None:
        """A first point above a threshold changes OK to that level."""
        assert run(evaluator(("crit", [90.0])), [(100, 95)]) == [("CRITICAL", True, "OK", 1, 0.0, "", False)]

    def test_count_duration_previous(self) -> None:
        """count and duration run within a level and restart on each change."""
        ev = evaluator(("warn", [70.0]), ("crit", [90.0]))
        assert run(ev, [(0, 5), (10, 6), (20, 75), (30, 76), (45, 95), (50, 5), (60, 5)]) == [
            ("OK", False, "OK", 1, 0.0, "", False),
            ("OK", False, "OK", 2, 10.0, "", False),
            ("WARNING", True, "OK", 1, 0.0, "", False),
            ("WARNING", False, "OK", 2, 10.0, "", False),
            ("CRITICAL", True, "WARNING", 1, 0.0, "", False),
            ("OK", True, "CRITICAL", 1, 0.0, "", False),
            ("OK", False, "CRITICAL", 2, 10.0, "", False),
        ]

    def test_start_ns_is_change_point_time(self) -> None:
        """start_ns is the time of the point that entered the level."""
        ev = evaluator(("crit", [90.0]))
        s = ev.new_state()
        ev.update(s, 1.0, 5 * S)
        assert s.start_ns == 5 * S
        ev.update(s, 95.0, 7 * S)
        ev.update(s, 96.0, 9 * S)
        assert (s.start_ns, s.count, s.duration_s) == (7 * S, 2, 2.0)

    def test_new_state(self) -> None:
        """A new state is OK, count 0, nothing pending, not flapping, no time yet."""
        s = evaluator(("crit", [1.0]), ("flapping", [0.2, 0.5]), ("history", [5])).new_state()
        assert (s.level, s.previous, s.changed, s.count, s.pending, s.flapping, s.last_ns) == (0, 0, False, 0, -1, False, NO_TIME)
        assert s.history_levels() == bytes(5)


class TestFor:
    FOR = ("for", [60 * S])

    def test_pending_then_entered_at_for(self) -> None:
        """A worse candidate is pending until it has held for `for`, then entered."""
        ev = evaluator(("crit", [90.0]), self.FOR)
        out = run(ev, [(0, 5), (10, 95), (40, 95), (69, 95), (70, 95), (80, 95)])
        assert [(a[0], a[1], a[5]) for a in out] == [
            ("OK", False, ""),
            ("OK", False, "CRITICAL"),
            ("OK", False, "CRITICAL"),
            ("OK", False, "CRITICAL"),
            ("CRITICAL", True, ""),
            ("CRITICAL", False, ""),
        ]
        assert out[3][3] == 4  # pending points count at the current level

    def test_breaking_point_resets_wait(self) -> None:
        """A point back at the current level resets the wait."""
        ev = evaluator(("crit", [90.0]), self.FOR)
        out = run(ev, [(0, 95), (50, 5), (60, 95), (110, 95), (120, 95)])
        assert [(a[0], a[5]) for a in out] == [
            ("OK", "CRITICAL"),
            ("OK", ""),
            ("OK", "CRITICAL"),
            ("OK", "CRITICAL"),
            ("CRITICAL", ""),
        ]

    def test_per_level_since(self) -> None:
        """WARNING pending from t0 and CRITICAL from t0+30s: WARNING at t0+60s, CRITICAL at t0+90s."""
        ev = evaluator(("warn", [70.0]), ("crit", [90.0]), self.FOR)
        out = run(ev, [(0, 75), (30, 95), (50, 95), (60, 95), (80, 95), (90, 95)])
        assert [(a[0], a[1], a[2], a[5]) for a in out] == [
            ("OK", False, "OK", "WARNING"),
            ("OK", False, "OK", "CRITICAL"),
            ("OK", False, "OK", "CRITICAL"),
            ("WARNING", True, "OK", "CRITICAL"),
            ("WARNING", False, "OK", "CRITICAL"),
            ("CRITICAL", True, "WARNING", ""),
        ]

    def test_candidate_drops_within_worse_levels(self) -> None:
        """CRITICAL's wait ends when the value drops to WARNING, but WARNING's goes on."""
        ev = evaluator(("warn", [70.0]), ("crit", [90.0]), self.FOR)
        out = run(ev, [(0, 75), (30, 95), (40, 75), (60, 75)])
        assert [(a[0], a[5]) for a in out] == [("OK", "WARNING"), ("OK", "CRITICAL"), ("OK", "WARNING"), ("WARNING", "")]

    def test_long_enough_for_both_jumps_straight_to_worst(self) -> None:
        """When several worse levels qualify on one point the worst one is entered."""
        ev = evaluator(("warn", [70.0]), ("crit", [90.0]), self.FOR)
        out = run(ev, [(0, 95), (60, 95)])
        assert [(a[0], a[1], a[2]) for a in out] == [("OK", False, "OK"), ("CRITICAL", True, "OK")]

    def test_improvement_is_immediate_without_recover_for(self) -> None:
        """`for` delays only worse levels; recovery is immediate."""
        ev = evaluator(("crit", [90.0]), self.FOR)
        out = run(ev, [(0, 95), (60, 95), (70, 5)])
        assert [(a[0], a[1]) for a in out] == [("OK", False), ("CRITICAL", True), ("OK", True)]

    def test_for_zero_is_immediate(self) -> None:
        """for(0s) enters a worse level on the first point."""
        ev = evaluator(("crit", [90.0]), ("for", [0]))
        assert levels(ev, [95]) == ["CRITICAL"]


class TestRecoverFor:
    REC = ("recoverFor", [60 * S])

    def test_recovery_waits(self) -> None:
        """A better candidate, OK included, is pending until it held for recoverFor."""
        ev = evaluator(("crit", [90.0]), self.REC)
        out = run(ev, [(0, 95), (10, 5), (50, 5), (70, 5)])
        assert [(a[0], a[1], a[5]) for a in out] == [
            ("CRITICAL", True, ""),
            ("CRITICAL", False, "OK"),
            ("CRITICAL", False, "OK"),
            ("OK", True, ""),
        ]

    def test_worse_point_resets_recovery(self) -> None:
        """A point back at the current level resets the recovery wait."""
        ev = evaluator(("crit", [90.0]), self.REC)
        out = run(ev, [(0, 95), (10, 5), (60, 95), (70, 5), (120, 5), (130, 5)])
        assert [(a[0], a[5]) for a in out] == [
            ("CRITICAL", ""),
            ("CRITICAL", "OK"),
            ("CRITICAL", ""),
            ("CRITICAL", "OK"),
            ("CRITICAL", "OK"),
            ("OK", ""),
        ]

    def test_stepwise_recovery(self) -> None:
        """Below warn from t0, below-everything from t0+30s: WARNING at t0+60s, OK at t0+90s."""
        ev = evaluator(("warn", [70.0]), ("crit", [90.0]), self.REC)
        out = run(ev, [(-10, 95), (0, 75), (30, 5), (60, 5), (90, 5)])
        assert [(a[0], a[5]) for a in out] == [
            ("CRITICAL", ""),
            ("CRITICAL", "WARNING"),
            ("CRITICAL", "OK"),
            ("WARNING", "OK"),
            ("OK", ""),
        ]

    def test_recovery_wait_with_reset(self) -> None:
        """A reset hold keeps the candidate at the level, so no recovery wait starts."""
        ev = evaluator(("crit", [90.0]), ("critReset", [80.0]), self.REC)
        out = run(ev, [(0, 95), (10, 85), (80, 85), (90, 70), (150, 70)])
        assert [(a[0], a[5]) for a in out] == [
            ("CRITICAL", ""),
            ("CRITICAL", ""),
            ("CRITICAL", ""),
            ("CRITICAL", "OK"),
            ("OK", ""),
        ]

    def test_for_and_recover_for_together(self) -> None:
        """With both waits a short spike and a short dip change nothing."""
        ev = evaluator(("crit", [90.0]), ("for", [30 * S]), self.REC)
        values = [5, 95, 5, 95, 95, 95, 95, 5, 95, 5, 5, 5, 5, 5, 5, 5]
        assert levels(ev, values) == ["OK"] * 6 + ["CRITICAL"] * 9 + ["OK"]


class TestOutOfOrder:
    def test_late_point_never_negative_duration(self) -> None:
        """A point older than the newest seen is timed at the newest time."""
        ev = evaluator(("crit", [90.0]))
        out = run(ev, [(100, 5), (200, 95), (150, 96), (50, 5)])
        assert [(a[0], a[1], a[4]) for a in out] == [("OK", False, 0.0), ("CRITICAL", True, 0.0), ("CRITICAL", False, 0.0), ("OK", True, 0.0)]

    def test_late_point_does_not_shorten_wait(self) -> None:
        """Waits are measured on the group's monotone clock."""
        ev = evaluator(("crit", [90.0]), ("for", [60 * S]))
        s = ev.new_state()
        for t, v in [(0, 95), (70, 95)]:
            ev.update(s, v, t * S)
        assert s.level == CRITICAL and s.start_ns == 70 * S
        ev2 = evaluator(("crit", [90.0]), ("for", [60 * S]))
        s2 = ev2.new_state()
        for t, v in [(30, 95), (0, 95), (60, 95)]:
            ev2.update(s2, v, t * S)
        assert s2.level == OK and s2.pending == CRITICAL  # the wait began at 30s, not 0s


def kapacitor_flapping(history: int, low: float, high: float, lv: Sequence[int]) -> List[Tuple[float, bool]]:
    """Test oracle: a plain transliteration of alert.go addEvent/percentChange/updateState."""
    h = [0] * history
    idx = 0
    flapping = False
    out = []
    for level in lv:
        idx = (idx + 1) % history
        h[idx] = level
        changes = 0.0
        weight = 0.8  # Go: maxWeight / weightDiff folded exactly at compile time
        step = (1.2 - weight) / float(history - 1)
        for i in range(history - 1):
            c = (i + idx) % history
            p = c - 1
            if p < 0:
                p = history - 1
            if h[c] != h[p]:
                changes += weight
            weight += step
        pct = changes / float(history - 1)
        if flapping and pct < low:
            flapping = False
        elif not flapping and pct > high:
            flapping = True
        out.append((pct, flapping))
    return out


class TestFlapping:
    def test_hand_computed_example(self) -> None:
        """history 4, OK->CRITICAL->OK->CRITICAL gives 0.578, 0.267, 0.933 as Kapacitor computes."""
        # Weights 0.8, 0.8+0.4/3, 0.8+0.8/3; the ring (slot 0..3) starts all OK, newest at idx.
        # 1) idx 1 [0,3,0,0]: pair(1,0) differs 0.8, pair(2,1) differs 0.9333 -> 1.7333/3 = 0.5778
        # 2) idx 2 [0,3,0,0]: pair(2,1) differs 0.8 -> 0.8/3 = 0.2667
        # 3) idx 3 [0,3,0,3]: all three pairs differ -> 2.8/3 = 0.9333
        ev = evaluator(("crit", [90.0]), ("flapping", [0.3, 0.5]), ("history", [4]))
        s = ev.new_state()
        got = []
        for t, v in enumerate([95.0, 5.0, 95.0]):
            ev.update(s, v, t * S)
            got.append((ev.percent_change(s), s.flapping))
        assert [p for p, _ in got] == pytest.approx([1.7333333 / 3, 0.8 / 3, 2.8 / 3], abs=1e-6)
        assert [f for _, f in got] == [True, False, True]

    def test_default_history_oscillation(self) -> None:
        """A level alternating every point starts flapping and stops once it settles."""
        ev = evaluator(("crit", [90.0]), ("flapping", [0.25, 0.5]))
        s = ev.new_state()
        flags = []
        for i in range(60):
            v = 95.0 if (i < 20 and i % 2) else 5.0
            ev.update(s, v, i * S)
            flags.append(s.flapping)
        assert not flags[0] and any(flags[:20]) and not flags[-1]

    def test_flapping_off_by_default(self) -> None:
        """Without flapping() the flag stays false whatever happens."""
        ev = evaluator(("crit", [90.0]))
        s = ev.new_state()
        for i in range(50):
            ev.update(s, 95.0 if i % 2 else 5.0, i * S)
            assert not s.flapping
        assert s.history == bytearray() and ev.percent_change(s) == 0.0

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers(2, 30),
        st.floats(0.0, 0.9),
        st.floats(0.01, 0.5),
        st.lists(st.sampled_from([5.0, 60.0, 80.0, 95.0]), max_size=80),
    )
    def test_matches_kapacitor_bit_for_bit(self, history: int, low: float, gap: float, values: List[float]) -> None:
        """Flapping flags and percentages equal the alert.go transliteration exactly."""
        high = min(1.0, low + gap)
        ev = evaluator(("info", [50.0]), ("warn", [70.0]), ("crit", [90.0]), ("flapping", [low, high]), ("history", [history]))
        s = ev.new_state()
        lv = []
        ours = []
        for t, v in enumerate(values):
            ev.update(s, v, t * S)
            lv.append(s.level)
            ours.append((ev.percent_change(s), s.flapping))
        assert ours == kapacitor_flapping(history, low, high, lv)


class TestGroups:
    def test_groups_are_independent(self) -> None:
        """Each group keeps its own state."""
        ev = evaluator(("crit", [90.0]))
        g = Groups(ev)
        ev.update(g.get("host=a", 0), 95.0, 0)
        ev.update(g.get("host=b", 0), 5.0, 0)
        assert (g.get("host=a", S).level, g.get("host=b", S).level, len(g)) == (CRITICAL, OK, 2)
        assert g.get("host=a", S) is g.get("host=a", 2 * S)

    def test_no_expire_keeps_everything(self) -> None:
        """Without expire no group is ever dropped."""
        ev = evaluator(("crit", [90.0]))
        g = Groups(ev)
        for i in range(100):
            ev.update(g.get(f"h{i}", i * 3600 * S), 1.0, i * 3600 * S)
        assert len(g) == 100 and g.expire(10**18) == 0

    def test_expiry_bounds_memory(self) -> None:
        """With expire(10s) and a new group every second, at most ~expire+sweep groups live."""
        ev = evaluator(("crit", [90.0]), ("expire", [10 * S]))
        g = Groups(ev)
        peak = 0
        for i in range(2000):
            t = i * S
            ev.update(g.get(f"h{i}", t), 1.0, t)
            ev.update(g.get("steady", t), 1.0, t)
            peak = max(peak, len(g))
        assert peak <= 14 and "steady" in g

    def test_silent_group_starts_afresh(self) -> None:
        """A group silent for more than expire loses its state; exactly expire keeps it."""
        ev = evaluator(("crit", [90.0]), ("expire", [60 * S]))
        g = Groups(ev)
        ev.update(g.get("a", 0), 95.0, 0)
        s = g.get("a", 60 * S)
        assert s.level == CRITICAL
        ev.update(s, 95.0, 60 * S)
        fresh = g.get("a", 121 * S)
        assert (fresh.level, fresh.count) == (OK, 0)

    def test_expire_returns_dropped_count(self) -> None:
        """expire(now) drops the groups silent too long and says how many."""
        ev = evaluator(("crit", [90.0]), ("expire", [60 * S]))
        g = Groups(ev)
        for name, t in (("a", 0), ("b", 30), ("c", 50)):
            ev.update(g.get(name, t * S), 1.0, t * S)
        assert g.expire(75 * S) == 1 and list(g) == ["b", "c"]
        assert g.expire(200 * S) == 2 and len(g) == 0


def _spread(ev: Evaluator, n_groups: int, n_points: int, seed: int) -> List[Tuple[str, float, int]]:
    rnd = random.Random(seed)
    return [(f"host=h{rnd.randrange(n_groups)}", rnd.choice([5.0, 60.0, 75.0, 85.0, 95.0]), i * 7 * S) for i in range(n_points)]


class TestSnapshot:
    def full(self) -> Evaluator:
        return evaluator(
            ("info", [50.0]),
            ("warn", [70.0]),
            ("crit", [90.0]),
            ("critReset", [80.0]),
            ("for", [20 * S]),
            ("recoverFor", [15 * S]),
            ("flapping", [0.2, 0.4]),
            ("history", [7]),
        )

    def test_empty_bytes_restore_nothing(self) -> None:
        """b'' (Kapacitor's empty entry) decodes to no groups."""
        assert decode_snapshot(b"") == Snapshot()

    def test_round_trip_identity(self) -> None:
        """encode -> decode -> restore gives equal states in the same order."""
        ev = self.full()
        g = Groups(ev)
        for group, v, t in _spread(ev, 20, 500, 1):
            ev.update(g.get(group, t), v, t)
        assert any(s.pending >= 0 for _, s in g.items()) and any(s.flapping for _, s in g.items())
        snap = decode_snapshot(encode_snapshot(g))
        assert snap.history == 7
        g2 = Groups(ev)
        g2.restore(snap)
        assert list(g2.items()) == list(g.items())

    def test_restore_continues_identically(self) -> None:
        """A run restored mid-way annotates the rest exactly like an uninterrupted run."""
        ev = self.full()
        points = _spread(ev, 10, 800, 2)
        g = Groups(ev)
        expected = []
        for group, v, t in points:
            s = g.get(group, t)
            ev.update(s, v, t)
            expected.append(ann(s))
        ev2 = self.full()
        g2 = Groups(ev2)
        got = []
        for i, (group, v, t) in enumerate(points):
            if i == 400:
                blob = encode_snapshot(g2)
                g2 = Groups(ev2)
                g2.restore(decode_snapshot(blob))
            s = g2.get(group, t)
            ev2.update(s, v, t)
            got.append(ann(s))
        assert got == expected

    def test_restore_adapts_history_length(self) -> None:
        """Restoring into a different history length keeps the newest levels."""
        ev = evaluator(("crit", [90.0]), ("flapping", [0.2, 0.4]), ("history", [4]))
        g = Groups(ev)
        s = g.get("a", 0)
        for t, v in enumerate([95.0, 5.0, 95.0, 95.0]):
            ev.update(s, v, t * S)
        blob = encode_snapshot(g)
        for hist, expect in ((6, bytes([0, 0, 3, 0, 3, 3])), (3, bytes([0, 3, 3]))):
            ev2 = evaluator(("crit", [90.0]), ("flapping", [0.2, 0.4]), ("history", [hist]))
            g2 = Groups(ev2)
            g2.restore(decode_snapshot(blob))
            s2 = g2.get("a", 10 * S)
            assert s2.history_levels() == expect
            ev2.update(s2, 95.0, 10 * S)
            assert s2.history_levels() == expect[1:] + b"\x03"

    def test_format_header(self) -> None:
        """The bytes start with the magic and version, so a later release can read them."""
        blob = encode_snapshot(Groups(evaluator(("crit", [1.0]))))
        assert blob[:4] == SNAPSHOT_MAGIC and blob[4] == SNAPSHOT_VERSION

    def test_compact(self) -> None:
        """A steady group costs well under 100 bytes with the default history."""
        ev = evaluator(("crit", [90.0]), ("flapping", [0.2, 0.4]))
        g = Groups(ev)
        for i in range(1000):
            ev.update(g.get(f"host=server{i:04d}", 0), 5.0, 0)
        assert len(encode_snapshot(g)) < 1000 * 80

    @pytest.mark.parametrize(
        "blob",
        [
            b"garbage!",
            b"\x00" * 64,
            b"KOAS",
            b"KOAS\x02\x00\x00\x00\x00\x00\x00",
            b"XOAS\x01\x00\x00\x00\x00\x00\x00",
            b"KOAS\x01\x01\x00\x00\x00\x00\x00",
            b"KOAS\x01\x00\x00\x00\x00\x00\x00extra",
            b"KOAS\x01\x00\x00\x01\x00\x00\x00",
            b"KOAS\x01\x00\x00\x01\x00\x00\x00\x02\xff\xfe",
            b'{"groups": {}}',
        ],
    )
    def test_garbage_raises(self, blob: bytes) -> None:
        """Garbage, wrong magic, unknown version, bad lengths or trailing bytes: SnapshotError."""
        with pytest.raises(SnapshotError) as info:
            decode_snapshot(blob)
        assert str(info.value)

    def test_unknown_version_message(self) -> None:
        """An unknown version says which version it is."""
        with pytest.raises(SnapshotError, match="version 9"):
            decode_snapshot(b"KOAS\x09\x00\x00\x00\x00\x00\x00")

    def test_every_truncation_raises(self) -> None:
        """Each proper prefix of a real snapshot is rejected, never half-restored."""
        ev = self.full()
        g = Groups(ev)
        for group, v, t in _spread(ev, 4, 60, 3):
            ev.update(g.get(group, t), v, t)
        blob = encode_snapshot(g)
        for cut in range(1, len(blob)):
            with pytest.raises(SnapshotError):
                decode_snapshot(blob[:cut])

    def test_bad_codes_raise(self) -> None:
        """Out-of-range level, pending or history codes are rejected."""
        ev = self.full()
        g = Groups(ev)
        ev.update(g.get("a", 0), 95.0, 0)
        blob = bytearray(encode_snapshot(g))
        fixed_at = 11 + 1 + 1  # header, length byte, "a"
        for offset, value in ((0, 4), (1, 9), (3, 7)):
            bad = bytearray(blob)
            bad[fixed_at + offset] = value
            with pytest.raises(SnapshotError):
                decode_snapshot(bytes(bad))
        bad = bytearray(blob)
        bad[-1] = 4
        with pytest.raises(SnapshotError):
            decode_snapshot(bytes(bad))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_bytes_only_snapshot_error(self, blob: bytes) -> None:
        """Random bytes, with or without a valid header, decode or raise SnapshotError only."""
        for data in (blob, SNAPSHOT_MAGIC + bytes([SNAPSHOT_VERSION]) + blob):
            try:
                decode_snapshot(data)
            except SnapshotError:
                pass


# --- property tests ----------------------------------------------------------------

_values = st.sampled_from([-10.0, 5.0, 45.0, 50.0, 55.0, 65.0, 70.0, 75.0, 82.0, 90.0, 95.0, math.nan])


@st.composite
def _evaluators(draw: st.DrawFn) -> Evaluator:
    opts: List[Option] = [("field", ["v"])]
    below = draw(st.booleans())
    sign = -1.0 if below else 1.0
    if below:
        opts.append(("below", []))
    for name, thr, reset in (("info", 50.0, 45.0), ("warn", 70.0, 65.0), ("crit", 90.0, 80.0)):
        if draw(st.booleans()):
            opts.append((name, [sign * thr]))
            if draw(st.booleans()):
                opts.append((name + "Reset", [sign * reset]))
    if len(opts) == 1 + below:
        opts.append(("crit", [sign * 90.0]))
    for name in ("for", "recoverFor"):
        opts.append((name, [draw(st.sampled_from([0, 5 * S, 20 * S]))]))
    if draw(st.booleans()):
        opts += [("flapping", [0.2, 0.4]), ("history", [draw(st.integers(2, 12))])]
    return Evaluator(parse_options(opts))


def _signed(ev: Evaluator, v: float) -> float:
    return -v if ev.opts.below else v


_steps = st.lists(st.tuples(_values, st.integers(-15, 30)), max_size=60)


class TestProperties:
    @settings(max_examples=300, deadline=None)
    @given(_evaluators(), _steps)
    def test_level_changes_only_on_differing_candidate(self, ev: Evaluator, steps: List[Tuple[float, int]]) -> None:
        """A point changes the level only if its candidate differs, and never to an unconfigured level."""
        s = ev.new_state()
        t = 0
        configured = {0} | {c for c, thr in ((1, ev.opts.info), (2, ev.opts.warn), (3, ev.opts.crit)) if thr is not None}
        for v, dt in steps:
            t += dt * S
            before = s.level
            cand = ev.classify(_signed(ev, v), before)
            ev.update(s, _signed(ev, v), t)
            if cand == before:
                assert s.level == before and not s.changed
            assert s.changed == (s.level != before)
            assert s.level in configured
            if s.changed:
                assert s.previous == before
                # the new level lies between the old level and the candidate
                assert min(before, cand) <= s.level <= max(before, cand)

    @settings(max_examples=300, deadline=None)
    @given(_evaluators(), _steps)
    def test_count_and_duration_monotone(self, ev: Evaluator, steps: List[Tuple[float, int]]) -> None:
        """Within a level count rises by one and duration never falls; a change restarts both."""
        s = ev.new_state()
        t = 0
        prev: Optional[Tuple[int, float]] = None
        for v, dt in steps:
            t += dt * S  # dt may be negative: out-of-order points
            ev.update(s, _signed(ev, v), t)
            assert s.duration_s >= 0.0
            assert s.pending != s.level
            assert (s.pending < 0) == all(x is None for x in s.since)
            if s.changed or prev is None:
                assert s.count == 1 and s.duration_s == 0.0
            else:
                assert s.count == prev[0] + 1 and s.duration_s >= prev[1]
            prev = (s.count, s.duration_s)

    @settings(max_examples=200, deadline=None)
    @given(_evaluators(), st.lists(st.tuples(st.integers(0, 5), _values, st.integers(-5, 30)), max_size=80), st.booleans())
    def test_snapshot_identity(self, ev: Evaluator, steps: List[Tuple[int, float, int]], expiring: bool) -> None:
        """encode -> decode of any reachable set of states restores equal states."""
        g = Groups(ev)
        t = 0
        for gi, v, dt in steps:
            t += dt * S
            ev.update(g.get(f"g{gi}", t), _signed(ev, v), t)
        g2 = Groups(ev)
        g2.restore(decode_snapshot(encode_snapshot(g)))
        assert list(g2.items()) == list(g.items())

    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(
            st.text(alphabet="ab=,\n\u00e9\u4e2d", max_size=6),
            st.tuples(
                st.integers(0, 3),
                st.integers(0, 3),
                st.booleans(),
                st.integers(-(2**63), 2**63 - 1),
                st.integers(0, 2**64 - 1),
                st.integers(-1, 3),
                st.lists(st.integers(-(2**63), 2**63 - 1), min_size=4, max_size=4),
                st.booleans(),
                st.integers(-(2**63), 2**63 - 1),
                st.binary(min_size=5, max_size=5).map(lambda b: bytes(x % 4 for x in b)),
                st.integers(0, 4),
            ),
            max_size=8,
        )
    )
    def test_snapshot_identity_raw_states(self, raw: Dict[str, Tuple[Any, ...]]) -> None:
        """encode -> decode is the identity for arbitrary field values, group ids included."""
        ev = evaluator(("crit", [1.0]), ("flapping", [0.2, 0.4]), ("history", [5]))
        states = {}
        for gid, (lvl, prev, chg, start, count, pending, since, flap, last, hist, idx) in raw.items():
            s = ev.new_state()
            s.level, s.previous, s.changed, s.start_ns, s.count = lvl, prev, chg, start, count
            s.pending = pending
            s.since = [x if pending >= 0 and (i == pending or i % 2) else None for i, x in enumerate(since)]
            s.flapping, s.last_ns = flap, last
            s.history = bytearray(hist)
            s.hist_idx = idx
            states[gid] = s
        g = Groups(ev)
        g.restore(Snapshot(history=5, states=states))
        snap = decode_snapshot(encode_snapshot(g))
        assert list(snap.states.items()) == list(states.items())
