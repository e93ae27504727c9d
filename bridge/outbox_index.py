"""The outbox's in-memory index: the head of every ``(target, key)`` queue, by due time.

Only :class:`bridge.outbox.Outbox`'s writer changes it (after a commit, with the
lock held), except claims, holds and reads, which take the lock themselves. Memory
is O(distinct keys): one head per key, never the rows behind it.
"""

from __future__ import annotations

import heapq
import threading
from typing import Callable, Dict, List, Optional, Set, Tuple

from .coalesce import BACKLOG_AGE
from .store import Forwarded, Head

__all__ = ["HeadIndex", "Key"]

Key = Tuple[str, str]


class HeadIndex:
    """Heads per target in a heap ordered by (due, seq); busy, held and coalescible keys."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        #: Store operations that failed with nobody waiting for them, by operation name.
        self._failed_ops: Dict[str, int] = {}
        self._heads: Dict[Key, Head] = {}
        self._heaps: Dict[str, List[Tuple[float, int, str]]] = {}
        #: The same, for heads that are resolves: under a rate limit they go first.
        self._ok_heaps: Dict[str, List[Tuple[float, int, str]]] = {}
        #: Keys with more than one pending row, per target: candidates for coalescing.
        self._coalescible: Dict[str, Set[str]] = {}
        self._busy: Dict[Key, int] = {}
        #: Idle keys held by :meth:`hold`; their heads wait in ``_parked`` until release.
        self._held: Set[Key] = set()
        self._parked: Dict[Key, Head] = {}
        self._pending: Dict[str, int] = {}
        self._dead: Dict[str, int] = {}
        self._forwarded: Dict[Key, Forwarded] = {}

    def _count_failure(self, op: str) -> None:
        with self._lock:
            self._failed_ops[op] = self._failed_ops.get(op, 0) + 1

    @staticmethod
    def _bump(counts: Dict[str, int], target: str, delta: int) -> None:
        counts[target] = counts.get(target, 0) + delta

    def _offer(self, head: Head) -> None:
        key = (head.target, head.key)
        if key in self._busy:
            return
        if key in self._held:
            parked = self._parked.get(key)
            if parked is None or head.seq < parked.seq:
                self._parked[key] = head
            return
        current = self._heads.get(key)
        if current is not None and current.seq <= head.seq:
            return
        self._heads[key] = head
        self._push(head)

    def _push(self, head: Head) -> None:
        entry = (head.due, head.seq, head.key)
        heapq.heappush(self._heaps.setdefault(head.target, []), entry)
        if head.level == "OK":
            heapq.heappush(self._ok_heaps.setdefault(head.target, []), entry)

    def peek(
        self, target: str, now: float, *, resolves_first: bool = False
    ) -> Tuple[Optional[Head], Optional[float]]:
        """The ready head of ``target`` with the earliest due time, or the next due time.
        With ``resolves_first`` a ready resolve (an OK head) is preferred: under a rate
        limit the platform hears "recovered" before new triggers of other ids."""
        with self._lock:
            if resolves_first:
                ready = self._top(self._ok_heaps.get(target), target)
                if ready is not None and ready.due <= now:
                    return ready, None
            head = self._top(self._heaps.get(target), target)
            if head is None:
                return None, None
            if head.due <= now:
                return head, None
            return None, head.due

    def _top(self, heap: Optional[List[Tuple[float, int, str]]], target: str) -> Optional[Head]:
        """The valid head at the top of a lazily cleaned heap (lock held)."""
        while heap:
            due, seq, key = heap[0]
            head = self._heads.get((target, key))
            if head is None or head.seq != seq or head.due != due:
                heapq.heappop(heap)
                continue
            return head
        return None

    def coalescible(self, target: str, now: Optional[float] = None, *, limited: bool = False) -> List[str]:
        """Keys of ``target`` with several pending rows, nothing in flight, and a backlog: the
        head has failed before, is :data:`~bridge.coalesce.BACKLOG_AGE` old, or ``limited``
        (the target's rate limiter holds deliveries back)."""
        now = self._clock() if now is None else now
        with self._lock:
            keys = self._coalescible.get(target)
            if not keys:
                return []
            out: List[str] = []
            for key in list(keys):
                k = (target, key)
                if k in self._busy:
                    continue
                head = self._heads.get(k) or self._parked.get(k)
                if head is None:
                    keys.discard(key)  # nothing pending any more
                elif limited or head.due > head.received_at or now - head.received_at >= BACKLOG_AGE:
                    out.append(key)
            return out

    def forwarded(self, target: str, key: str) -> Optional[Forwarded]:
        """The last delivered event for this key, if still remembered."""
        with self._lock:
            return self._forwarded.get((target, key))

    def idle(self, target: str, key: str) -> bool:
        """No pending or in-flight row for the key, and not held: nothing will tell the
        platform about it unless someone enqueues. Reconcile and keep-alive act only on these."""
        k = (target, key)
        with self._lock:
            return k not in self._heads and k not in self._busy and k not in self._held
