"""Outage coalescing: which queued events of one id still need to reach the platform.

After an outage the queue holds *history*; the on-call person needs *state*.
When several events of one ``(target, id)`` are pending, at most two go:

- ``worst-then-latest`` (default): the worst level among the ones skipped, if it
  differs from what the platform was last told (the ledger) and from the latest
  level, so an incident that opened and closed during the outage is still seen;
  then the latest event.
- ``latest``: only the latest event.
- ``off``: every event, in order (history replay).

The skipped rows keep their data, with state ``superseded``. Pure functions here;
the outbox applies the plan in its writer transaction.

Coalescing is for a platform that cannot keep up, not for normal flow: an id is
coalesced only when its oldest queued event has already failed once, has waited
:data:`BACKLOG_AGE` seconds (the bridge or the platform was down), or the target's
rate limiter is holding deliveries back. A quick burst to a healthy platform is
delivered event by event.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

__all__ = ["BACKLOG_AGE", "MODES", "SEVERITY", "keep"]

MODES = ("worst-then-latest", "latest", "off")
SEVERITY = {"OK": 0, "INFO": 1, "WARNING": 2, "CRITICAL": 3}
#: Seconds an id's oldest queued event waits before its queue counts as a backlog.
BACKLOG_AGE = 10.0


def keep(rows: Sequence[Tuple[int, str]], told: Optional[str], mode: str) -> List[int]:
    """The seqs (ascending) to deliver out of one id's pending ``(seq, level)`` rows.

    ``told`` is the level the platform was last told (``None``: never told, which
    for a platform is the same as OK).
    """
    if mode not in MODES:
        raise ValueError(f"unknown coalesce mode {mode!r} (one of {', '.join(MODES)})")
    if mode == "off" or len(rows) <= 1:
        return [seq for seq, _ in rows]
    latest_seq, latest_level = rows[-1]
    if mode == "latest":
        return [latest_seq]
    older = rows[:-1]
    worst = max((level for _, level in older), key=lambda level: SEVERITY.get(level, 0))
    known = told or "OK"
    if worst == known or worst == latest_level:
        return [latest_seq]
    # The most recent event at that level: its data is the freshest description of the peak.
    worst_seq = max(seq for seq, level in older if level == worst)
    return [worst_seq, latest_seq]
