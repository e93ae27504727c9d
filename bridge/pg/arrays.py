"""Array parameters as PostgreSQL array literals, built with str methods (C code).

psycopg's list dumpers run Python code per element; over the arrays of a batch statement
(``unnest(%s::text[], ...)``) they were most of the writer's and the finisher's driver CPU.
Every element is quoted, so commas, braces, spaces and the word NULL need no more care; the
statement casts each literal (``%s::text[]``).
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["bools", "byteas", "floats", "ints", "texts"]


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def texts(values: Sequence[Any]) -> str:
    if None not in values:
        # Common case, in C: no element holds a quote or a backslash, so none needs escaping
        # (the joined text then holds exactly the separators' quotes).
        joined = '","'.join(values)
        if "\\" not in joined and joined.count('"') == 2 * (len(values) - 1):
            return '{"' + joined + '"}'
    return "{" + ",".join("NULL" if v is None else _quoted(v) for v in values) + "}"


def byteas(values: Sequence[Any]) -> str:
    return "{" + ",".join("NULL" if v is None else '"\\\\x' + v.hex() + '"' for v in values) + "}"


def floats(values: Sequence[Any]) -> str:
    return "{" + ",".join("NULL" if v is None else repr(float(v)) for v in values) + "}"


def ints(values: Sequence[Any]) -> str:
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


def bools(values: Sequence[Any]) -> str:
    return "{" + ",".join("t" if v else "f" for v in values) + "}"
