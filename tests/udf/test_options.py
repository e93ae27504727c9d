"""Tests for udf.options: the Info contract and Init-time validation."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udf.options import (
    INFO_OPTIONS,
    LEVEL_NAMES,
    MAX_HISTORY,
    AlertOptions,
    OptionError,
    parse_options,
)

S = 1_000_000_000
Opts = List[Tuple[str, Sequence[object]]]


def base(*extra: Tuple[str, Sequence[object]]) -> Opts:
    return [("field", ["usage_user"]), *extra]


def error_of(options: Opts) -> OptionError:
    with pytest.raises(OptionError) as info:
        parse_options(options)
    return info.value


class TestInfoOptions:
    def test_contract_matches_issue_table(self) -> None:
        """Option names and Kapacitor value types are exactly the issues' interface (changesOnly: issue 14)."""
        assert INFO_OPTIONS == {
            "field": ("STRING",),
            "info": ("DOUBLE",),
            "warn": ("DOUBLE",),
            "crit": ("DOUBLE",),
            "infoReset": ("DOUBLE",),
            "warnReset": ("DOUBLE",),
            "critReset": ("DOUBLE",),
            "below": (),
            "for": ("DURATION",),
            "recoverFor": ("DURATION",),
            "flapping": ("DOUBLE", "DOUBLE"),
            "history": ("INT",),
            "prefix": ("STRING",),
            "expire": ("DURATION",),
            "changesOnly": (),
        }

    def test_level_names(self) -> None:
        """Level codes 0..3 name OK, INFO, WARNING, CRITICAL."""
        assert LEVEL_NAMES == ("OK", "INFO", "WARNING", "CRITICAL")


class TestParseOptions:
    def test_changes_only_flag(self) -> None:
        """changesOnly takes no value and is off by default."""
        assert parse_options([("field", ["x"]), ("crit", [1.0])]).changes_only is False
        assert parse_options([("field", ["x"]), ("crit", [1.0]), ("changesOnly", [])]).changes_only is True

    def test_minimal_defaults(self) -> None:
        """A field and one threshold give the documented defaults for everything else."""
        o = parse_options(base(("crit", [90.0])))
        assert o == AlertOptions(field="usage_user", crit=90.0)
        assert (o.history, o.prefix, o.expire_ns, o.for_ns, o.recover_for_ns) == (21, "alert_", 0, 0, 0)
        assert o.flapping is None and o.below is False

    def test_every_option(self) -> None:
        """Every option lands in its AlertOptions attribute, durations as nanoseconds."""
        o = parse_options(
            base(
                ("info", [50.0]),
                ("warn", [70.0]),
                ("crit", [90.0]),
                ("infoReset", [45.0]),
                ("warnReset", [65.0]),
                ("critReset", [80.0]),
                ("for", [60 * S]),
                ("recoverFor", [30 * S]),
                ("flapping", [0.25, 0.5]),
                ("history", [10]),
                ("prefix", ["st_"]),
                ("expire", [3600 * S]),
            )
        )
        assert o == AlertOptions(
            field="usage_user",
            info=50.0,
            warn=70.0,
            crit=90.0,
            info_reset=45.0,
            warn_reset=65.0,
            crit_reset=80.0,
            below=False,
            for_ns=60 * S,
            recover_for_ns=30 * S,
            flapping=(0.25, 0.5),
            history=10,
            prefix="st_",
            expire_ns=3600 * S,
        )

    def test_below_mode(self) -> None:
        """The zero-argument below() option turns on below mode with reversed ordering."""
        o = parse_options(base(("below", []), ("info", [30.0]), ("warn", [20.0]), ("crit", [10.0]), ("critReset", [15.0])))
        assert o.below and (o.info, o.warn, o.crit, o.crit_reset) == (30.0, 20.0, 10.0, 15.0)

    def test_repeated_option_last_wins(self) -> None:
        """Kapacitor sends every call of a repeated option; the last one counts."""
        o = parse_options(base(("crit", [99.0]), ("crit", [90.0]), ("field", ["x"])))
        assert (o.field, o.crit) == ("x", 90.0)

    def test_equal_thresholds_allowed(self) -> None:
        """Equal thresholds are accepted (the higher level simply wins)."""
        o = parse_options(base(("info", [90.0]), ("warn", [90.0]), ("crit", [90.0])))
        assert o.info == o.warn == o.crit == 90.0

    def test_reset_equal_to_threshold_allowed(self) -> None:
        """A reset equal to its threshold is on the right side in both modes."""
        assert parse_options(base(("crit", [90.0]), ("critReset", [90.0]))).crit_reset == 90.0
        assert parse_options(base(("below", []), ("crit", [9.0]), ("critReset", [9.0]))).crit_reset == 9.0

    def test_zero_durations_and_empty_prefix(self) -> None:
        """Zero durations disable their feature and an empty prefix is the user's choice."""
        o = parse_options(base(("crit", [1.0]), ("for", [0]), ("recoverFor", [0]), ("expire", [0]), ("prefix", [""])))
        assert (o.for_ns, o.recover_for_ns, o.expire_ns, o.prefix) == (0, 0, 0, "")

    def test_flapping_bounds_inclusive(self) -> None:
        """flapping(0.0, 1.0) is the widest accepted range."""
        assert parse_options(base(("crit", [1.0]), ("flapping", [0.0, 1.0]))).flapping == (0.0, 1.0)

    def test_history_bounds(self) -> None:
        """history accepts 2 and MAX_HISTORY."""
        for h in (2, MAX_HISTORY):
            assert parse_options(base(("crit", [1.0]), ("history", [h]))).history == h


class TestOptionErrors:
    @pytest.mark.parametrize(
        ("options", "option"),
        [
            ([("crit", [90.0])], "field"),
            ([("field", [""]), ("crit", [90.0])], "field"),
            (base(), "crit"),
            (base(("warn", [95.0]), ("crit", [90.0])), "warn"),
            (base(("info", [75.0]), ("warn", [70.0])), "info"),
            (base(("info", [95.0]), ("crit", [90.0])), "info"),
            (base(("below", []), ("warn", [5.0]), ("crit", [10.0])), "warn"),
            (base(("below", []), ("info", [15.0]), ("warn", [20.0])), "info"),
            (base(("crit", [90.0]), ("critReset", [91.0])), "critReset"),
            (base(("warn", [70.0]), ("warnReset", [70.5])), "warnReset"),
            (base(("info", [50.0]), ("infoReset", [60.0])), "infoReset"),
            (base(("below", []), ("crit", [10.0]), ("critReset", [9.0])), "critReset"),
            (base(("crit", [90.0]), ("warnReset", [60.0])), "warnReset"),
            (base(("crit", [90.0]), ("flapping", [0.5, 0.5])), "flapping"),
            (base(("crit", [90.0]), ("flapping", [0.6, 0.5])), "flapping"),
            (base(("crit", [90.0]), ("flapping", [0.2, 1.5])), "flapping"),
            (base(("crit", [90.0]), ("flapping", [-0.1, 0.5])), "flapping"),
            (base(("crit", [90.0]), ("for", [-1])), "for"),
            (base(("crit", [90.0]), ("recoverFor", [-S])), "recoverFor"),
            (base(("crit", [90.0]), ("expire", [-5])), "expire"),
            (base(("crit", [90.0]), ("history", [1])), "history"),
            (base(("crit", [90.0]), ("history", [MAX_HISTORY + 1])), "history"),
            (base(("crit", [90.0]), ("nope", [1.0])), "nope"),
            (base(("crit", [90.0, 95.0])), "crit"),
            (base(("crit", [])), "crit"),
            (base(("crit", [90.0]), ("below", [True])), "below"),
            (base(("crit", [90.0]), ("flapping", [0.25])), "flapping"),
            (base(("crit", [90])), "crit"),
            (base(("crit", [True])), "crit"),
            (base(("crit", ["90"])), "crit"),
            (base(("crit", [math.nan])), "crit"),
            (base(("crit", [math.inf])), "crit"),
            (base(("crit", [90.0]), ("history", [21.0])), "history"),
            (base(("crit", [90.0]), ("history", [True])), "history"),
            (base(("crit", [90.0]), ("for", [1.5])), "for"),
            ([("field", [3]), ("crit", [90.0])], "field"),
            (base(("crit", [90.0]), ("prefix", [None])), "prefix"),
        ],
    )
    def test_rejected_and_named(self, options: Opts, option: str) -> None:
        """Invalid options raise OptionError whose option and message name the culprit."""
        err = error_of(options)
        assert err.option == option
        assert option in str(err)

    def test_reset_without_threshold_message(self) -> None:
        """A reset without its threshold says which threshold is missing."""
        assert "needs .warn()" in str(error_of(base(("crit", [90.0]), ("warnReset", [60.0]))))

    def test_order_message_names_both(self) -> None:
        """An inverted pair names both options and their values."""
        msg = str(error_of(base(("warn", [95.0]), ("crit", [90.0]))))
        assert "warn" in msg and "crit" in msg and "95.0" in msg and "90.0" in msg

    @pytest.mark.parametrize("bad", [None, 5, [("field",)], [("field", 5)], [(1, ["x"])], ["ab"]])
    def test_malformed_input(self, bad: object) -> None:
        """Input that is not a sequence of (name, values) pairs is an OptionError too."""
        with pytest.raises(OptionError):
            parse_options(bad)  # type: ignore[arg-type]


_names = st.sampled_from(sorted(INFO_OPTIONS) + ["bogus", ""])
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-100, max_value=100),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.booleans(),
    st.text(alphabet="ab_é", max_size=5),
    st.none(),
)


@st.composite
def _option_lists(draw: st.DrawFn) -> Opts:
    opts: Opts = []
    if draw(st.booleans()):
        opts.append(("field", ["v"]))
    for _ in range(draw(st.integers(0, 8))):
        name = draw(_names)
        types = INFO_OPTIONS.get(name, ("DOUBLE",))
        if draw(st.integers(0, 9)) == 0:
            vals = draw(st.lists(_values, max_size=3))
        else:
            vals = []
            for t in types:
                if t == "DOUBLE":
                    vals.append(draw(st.floats(-100, 100) | st.sampled_from([0.0, 0.25, 0.5, 1.0])))
                elif t == "STRING":
                    vals.append(draw(st.text(alphabet="ab_é", max_size=5)))
                else:
                    vals.append(draw(st.integers(-3, 100)))
        opts.append((name, vals))
    return opts


class TestParseProperties:
    @given(_option_lists())
    def test_only_option_error(self, options: Opts) -> None:
        """Random option lists either parse or raise OptionError, never anything else."""
        try:
            o = parse_options(options)
        except OptionError as e:
            assert e.option and str(e).startswith(e.option)
            return
        assert isinstance(o, AlertOptions)

    @given(_option_lists())
    def test_accepted_options_are_consistent(self, options: Opts) -> None:
        """Whatever parses has a field, a threshold, ordered thresholds and sane resets."""
        try:
            o = parse_options(options)
        except OptionError:
            return
        assert o.field
        thresholds = [t for t in (o.info, o.warn, o.crit) if t is not None]
        assert thresholds
        assert thresholds == sorted(thresholds, reverse=o.below)
        for thr, reset in ((o.info, o.info_reset), (o.warn, o.warn_reset), (o.crit, o.crit_reset)):
            if reset is not None:
                assert thr is not None
                assert (reset >= thr) if o.below else (reset <= thr)
        assert min(o.for_ns, o.recover_for_ns, o.expire_ns) >= 0
        assert 2 <= o.history <= MAX_HISTORY
        if o.flapping is not None:
            assert 0.0 <= o.flapping[0] < o.flapping[1] <= 1.0
