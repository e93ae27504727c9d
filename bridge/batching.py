"""The loop behind every group commit: wait for one item, take what else is already queued
(up to a limit), hand the lot over as one batch.

The SQLite writer, the PostgreSQL writer and the PostgreSQL outcome finisher all run it, so
a flood costs one transaction per batch, not one per item, while a lone item goes at once.
"""

from __future__ import annotations

import queue
from typing import Any, Callable, List, Optional

__all__ = ["run_batches"]


def run_batches(
    source: "queue.SimpleQueue[Any]", handle: Callable[[List[Any]], None], stop: object, limit: Optional[int] = None
) -> None:
    """Call ``handle(batch)`` for each batch taken from ``source`` until ``stop`` is taken.
    Items queued after ``stop`` stay in ``source`` for the caller to refuse."""
    while True:
        first = source.get()
        if first is stop:
            return
        batch = [first]
        stopping = False
        while limit is None or len(batch) < limit:
            try:
                nxt = source.get_nowait()
            except queue.Empty:
                break
            if nxt is stop:
                stopping = True
                break
            batch.append(nxt)
        handle(batch)
        if stopping:
            return
