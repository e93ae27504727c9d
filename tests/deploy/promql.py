"""Just enough PromQL lexing to list the metric names an expression reads.

Not a parser: it drops strings, label matchers, ranges and grouping label lists, then takes
every identifier that is not a function call, keyword or number. That is exact for the
expressions we ship (checked by promtool for syntax), which is all it needs to be.
"""

from __future__ import annotations

import re
from typing import Set

__all__ = ["metric_names"]

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "inf", "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> Set[str]:
    """Metric names read by ``expr`` (Grafana's ``$variables`` are treated as opaque)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)          # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)         # ranges, subqueries
    text = _GROUPING.sub(" ", text)                 # by (target), on (job, instance)
    text = re.sub(r"\$\w+", " ", text)              # Grafana variables outside ranges
    text = re.sub(r"(?<![A-Za-z0-9_:])\d[\w.]*", " ", text)  # numbers, durations (5m)
    names: Set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names
