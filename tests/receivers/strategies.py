"""Hypothesis strategies for Kapacitor alert events, adversarial but parseable.

Everything :func:`bridge.event.parse` would accept is fair game: ids of up to
4096 characters, lone surrogates (JSON ``\\ud800`` escapes), control characters,
characters JSON escapes sixfold, very long messages and details, any number of
tags with any keys, nested field values, times from year 1 to 9999, huge or
negative durations. Formatters must turn all of it into valid platform requests.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict

from hypothesis import strategies as st

from bridge.event import LEVELS, MAX_ID_CHARS, AlertEvent

__all__ = ["alert_events", "json_values", "nasty_text"]

_SPECIAL = st.sampled_from(['"', "\\", "\x00", "\n", "\r", "\t", "\x7f", "\u2028", "\ud800", "\udfff", "é", "€", "😀", "/", "%", ":", "=", " "])
_CHAR = st.one_of(st.characters(), _SPECIAL)


def nasty_text(max_size: int = 60, huge: int = 0) -> st.SearchStrategy[str]:
    """Short mixed text; with ``huge``, sometimes one character repeated up to ``huge`` times."""
    small = st.text(alphabet=_CHAR, max_size=max_size)
    if not huge:
        return small
    big = st.builds(lambda c, n, tail: c * n + tail, _CHAR, st.integers(0, huge), small)
    return st.one_of(small, small, big)


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        nasty_text(20),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(nasty_text(8), inner, max_size=3)),
        max_leaves=8,
    )


@st.composite
def _data(draw: Any) -> Dict[str, Any]:
    if draw(st.integers(0, 9)) == 0:
        return {}
    series: Dict[str, Any] = {}
    if draw(st.booleans()):
        series["name"] = draw(nasty_text(40, huge=draw(st.sampled_from([0, 0, 5000]))))
    tags = draw(st.dictionaries(nasty_text(30), nasty_text(40, huge=draw(st.sampled_from([0, 0, 3000]))), max_size=30))
    if tags:
        series["tags"] = tags
    columns = ["time"] + draw(st.lists(nasty_text(15), max_size=6))
    series["columns"] = columns
    series["values"] = [["2025-06-02T08:15:00Z"] + [draw(json_values()) for _ in columns[1:]]]
    return {"series": [series]}


@st.composite
def alert_events(draw: Any, huge: int = 700_000) -> AlertEvent:
    """An :class:`AlertEvent` as ``parse`` could produce it (``raw`` left empty)."""
    ident = draw(
        st.one_of(
            nasty_text(80),
            st.builds(lambda c, n: c * n, _CHAR, st.integers(200, MAX_ID_CHARS)),
        ).filter(lambda s: s.strip() and len(s) <= MAX_ID_CHARS)
    )
    return AlertEvent(
        id=ident,
        level=draw(st.sampled_from(LEVELS)),
        time=draw(
            st.datetimes(
                min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(timezone.utc)
            )
        ),
        message=draw(nasty_text(200, huge=huge)),
        details=draw(nasty_text(200, huge=huge)),
        duration_ns=draw(st.one_of(st.integers(0, 10**13), st.integers(-(2**63), 2**63 - 1))),
        previous_level=draw(st.sampled_from(LEVELS)),
        recoverable=draw(st.booleans()),
        data=draw(_data()),
    )
