"""Jinja2 environment and the filters that turn store values into words at 3 a.m."""

from __future__ import annotations

import time
from typing import Optional

import jinja2

__all__ = ["ago", "dur", "environment", "size", "utc"]


def dur(seconds: Optional[float]) -> str:
    """``95`` → ``1m 35s``; two units at most, so it reads at a glance."""
    if seconds is None:
        return "—"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s}s" if s else f"{m}m"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h {m}m" if m else f"{h}h"
    d, h = divmod(h, 24)
    return f"{d}d {h}h" if h else f"{d}d"


def ago(when: Optional[float], now: Optional[float] = None) -> str:
    """How long before ``now`` (both epoch seconds); ``never`` for ``None``."""
    if when is None:
        return "never"
    return f"{dur((time.time() if now is None else now) - when)} ago"


def utc(when: Optional[float]) -> str:
    if when is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def environment() -> jinja2.Environment:
    """Templates from the package, HTML-escaped always (alert text comes from outside)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bridge.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=ago, dur=dur, utc=utc, size=size)
    return env
