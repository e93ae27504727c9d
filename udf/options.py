"""Options of ``@alertState()``: what Info declares and how Init validates them.

Kapacitor checks option names, arity and value types against ``INFO_OPTIONS`` when a
task is defined, but a socket client or a hand-written test may send anything, so
:func:`parse_options` checks them again and raises only :class:`OptionError`, whose
message names the offending option (the handler turns it into ``InitResponse``
``success=false``).

Choices where the issue is silent:

* Equal thresholds are allowed (``warn(90.0).crit(90.0)``): the higher level wins,
  so the lower one is simply never reached.  Only a strict inversion is an error.
* A reset equal to its threshold is allowed: it holds the level only while the value
  sits exactly on the threshold.
* ``flapping(low, high)`` needs ``0 <= low < high <= 1``.
* ``history`` must lie in 2..``MAX_HISTORY``; it costs one byte per group and
  flap detection scans it, so an absurd value is refused rather than honoured.
* Thresholds must be finite numbers; a zero duration disables ``for``,
  ``recoverFor`` and ``expire``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

__all__ = [
    "INFO_OPTIONS",
    "LEVEL_NAMES",
    "MAX_HISTORY",
    "OPTIONS",
    "AlertOptions",
    "OptionSpec",
    "OptionError",
    "options_help",
    "parse_options",
]

LEVEL_NAMES = ("OK", "INFO", "WARNING", "CRITICAL")
"""Level names indexed by level code 0..3."""

MAX_HISTORY = 1000
"""Largest accepted ``history``."""

@dataclass(frozen=True)
class OptionSpec:
    """One ``@alertState()`` option: its Kapacitor value types and what it does (for --help)."""

    name: str
    types: Tuple[str, ...]
    meaning: str


OPTIONS: Tuple[OptionSpec, ...] = (
    OptionSpec("field", ("STRING",), "required: the numeric field to evaluate (double or int)"),
    OptionSpec("info", ("DOUBLE",), "INFO threshold"),
    OptionSpec("warn", ("DOUBLE",), "WARNING threshold"),
    OptionSpec("crit", ("DOUBLE",), "CRITICAL threshold (at least one threshold is required)"),
    OptionSpec("infoReset", ("DOUBLE",), "stay INFO until the value crosses this"),
    OptionSpec("warnReset", ("DOUBLE",), "stay WARNING until the value crosses this"),
    OptionSpec("critReset", ("DOUBLE",), "stay CRITICAL until the value crosses this"),
    OptionSpec("below", (), "lower values are worse (default: higher is worse)"),
    OptionSpec("for", ("DURATION",), "a worse level must hold this long before it is entered"),
    OptionSpec("recoverFor", ("DURATION",), "a better level must hold this long before it is entered"),
    OptionSpec("flapping", ("DOUBLE", "DOUBLE"), "low, high: flap detection as Kapacitor's alert node"),
    OptionSpec("history", ("INT",), "state-change history length for flapping (default 21)"),
    OptionSpec("prefix", ("STRING",), "prefix of the added fields (default 'alert_')"),
    OptionSpec("expire", ("DURATION",), "drop the state of a group silent this long (default never)"),
    OptionSpec("changesOnly", (), "emit only the points whose level changed (default: every point)"),
)
"""Every option, in the order --help lists them."""

INFO_OPTIONS: Dict[str, Tuple[str, ...]] = {o.name: o.types for o in OPTIONS}
"""Option name -> Kapacitor ValueType names, in argument order (the Info contract)."""


class OptionError(ValueError):
    """An option is unknown, malformed or inconsistent; ``option`` names it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


@dataclass(frozen=True)
class AlertOptions:
    """Validated options; thresholds are as written (``below`` is not applied yet)."""

    field: str
    info: Optional[float] = None
    warn: Optional[float] = None
    crit: Optional[float] = None
    info_reset: Optional[float] = None
    warn_reset: Optional[float] = None
    crit_reset: Optional[float] = None
    below: bool = False
    for_ns: int = 0
    recover_for_ns: int = 0
    flapping: Optional[Tuple[float, float]] = None
    history: int = 21
    prefix: str = "alert_"
    expire_ns: int = 0
    changes_only: bool = False


# Per level code: (threshold option, reset option, AlertOptions attributes).
_LEVELS = (
    (1, "info", "infoReset", "info", "info_reset"),
    (2, "warn", "warnReset", "warn", "warn_reset"),
    (3, "crit", "critReset", "crit", "crit_reset"),
)


def options_help() -> str:
    """The option list for ``--help``: TICKscript call syntax and meaning, from :data:`OPTIONS`."""
    calls = [(f".{o.name}({', '.join(o.types)})", o.meaning) for o in OPTIONS]
    width = max(len(c) for c, _ in calls)
    return "\n".join(f"  {c.ljust(width)}  {m}" for c, m in calls)


def _check_value(name: str, vtype: str, value: object) -> object:
    """Return ``value`` if it has the Python type of Kapacitor's ``vtype``."""
    if vtype == "STRING":
        if isinstance(value, str):
            return value
        expected = "a string"
    elif vtype == "DOUBLE":
        # bool is an int subclass; Kapacitor never coerces INT to DOUBLE either.
        if isinstance(value, float):
            if not math.isfinite(value):
                raise OptionError(name, f"must be a finite number, got {value!r}")
            return value
        expected = "a DOUBLE such as 90.0"
    else:  # INT, DURATION (nanoseconds)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "a duration such as 1m" if vtype == "DURATION" else "an integer"
    raise OptionError(name, f"expected {expected}, got {type(value).__name__} {value!r}")


def parse_options(options: Sequence[Tuple[str, Sequence[object]]]) -> AlertOptions:
    """Validate Init options (name, python-typed values); a repeated option: last wins."""
    raw: Dict[str, Tuple[object, ...]] = {}
    try:
        items = list(options)
    except TypeError:
        raise OptionError("options", "expected a sequence of (name, values)") from None
    for item in items:
        try:
            name, values = item
            vals = tuple(values)
        except (TypeError, ValueError):
            raise OptionError("options", f"malformed option {item!r}") from None
        if not isinstance(name, str):
            raise OptionError(repr(name), "option name must be a string")
        types = INFO_OPTIONS.get(name)
        if types is None:
            known = ", ".join(sorted(INFO_OPTIONS))
            raise OptionError(name or repr(name), f"unknown option (known: {known})")
        if len(vals) != len(types):
            raise OptionError(name, f"expected {len(types)} argument(s), got {len(vals)}")
        raw[name] = tuple(_check_value(name, t, v) for t, v in zip(types, vals))

    def one(name: str) -> object:
        vals = raw.get(name)
        return None if vals is None else vals[0]

    field = one("field")
    if field is None:
        raise OptionError("field", "required: name the field to evaluate, e.g. .field('usage_user')")
    assert isinstance(field, str)
    if not field:
        raise OptionError("field", "must not be empty")

    below = "below" in raw
    kw: Dict[str, object] = {"field": field, "below": below, "changes_only": "changesOnly" in raw}
    thresholds = []  # (code, option name, value) of the thresholds that are set
    for code, tname, rname, tattr, rattr in _LEVELS:
        thr = one(tname)
        reset = one(rname)
        if thr is not None:
            assert isinstance(thr, float)
            thresholds.append((code, tname, thr))
            kw[tattr] = thr
        if reset is not None:
            assert isinstance(reset, float)
            if thr is None:
                raise OptionError(rname, f"needs .{tname}(): a reset without its threshold")
            if not below and reset > thr:
                raise OptionError(rname, f"{reset!r} is above {tname} {thr!r}; in above mode a reset must be <= its threshold")
            if below and reset < thr:
                raise OptionError(rname, f"{reset!r} is below {tname} {thr!r}; in below mode a reset must be >= its threshold")
            kw[rattr] = reset
    if not thresholds:
        raise OptionError("crit", "no threshold: set at least one of .info(), .warn(), .crit()")
    for (_, lname, lval), (_, hname, hval) in zip(thresholds, thresholds[1:]):
        if not below and lval > hval:
            raise OptionError(lname, f"{lval!r} is greater than {hname} {hval!r}; above mode needs info <= warn <= crit")
        if below and lval < hval:
            raise OptionError(lname, f"{lval!r} is less than {hname} {hval!r}; below mode needs info >= warn >= crit")

    for name, attr in (("for", "for_ns"), ("recoverFor", "recover_for_ns"), ("expire", "expire_ns")):
        dur = one(name)
        if dur is not None:
            assert isinstance(dur, int)
            if dur < 0:
                raise OptionError(name, f"must not be negative, got {dur} ns")
            kw[attr] = dur

    if "flapping" in raw:
        low, high = raw["flapping"]
        assert isinstance(low, float) and isinstance(high, float)
        if not (0.0 <= low <= 1.0 and 0.0 <= high <= 1.0):
            raise OptionError("flapping", f"({low!r}, {high!r}): low and high are fractions between 0 and 1")
        if low >= high:
            raise OptionError("flapping", f"({low!r}, {high!r}): low must be less than high")
        kw["flapping"] = (low, high)

    history = one("history")
    if history is not None:
        assert isinstance(history, int)
        if not 2 <= history <= MAX_HISTORY:
            raise OptionError("history", f"must be between 2 and {MAX_HISTORY}, got {history}")
        kw["history"] = history

    prefix = one("prefix")
    if prefix is not None:
        kw["prefix"] = prefix

    return AlertOptions(**kw)  # type: ignore[arg-type]
