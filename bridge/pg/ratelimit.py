"""Rate limits shared by replicas: one sliding-window log per target in the database.

Same rule as :class:`bridge.ratelimit.RateLimiter` (every window of the configured
length holds at most ``count`` sends, plus the same safety margin), but the log
of spent tokens is a table, and taking a token locks the target's row: three
replicas together never exceed the platform's limit. Times are the database's
clock, so replicas on skewed hosts agree.

Delivery asks :meth:`wait_time` before claiming and calls :meth:`try_acquire` as
the request is handed to the delivery loop; here ``wait_time`` already *takes* the
token (a reservation kept for this replica's next send) so no other replica can
take it in between, and ``try_acquire`` stamps it with the send time. A claimed
row that is not sent (silenced, too old) leaves the reservation for the next one.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Dict, Optional

from ..errors import StoreError
from ..ratelimit import RateLimiter
from ..targets.base import RateLimit

if TYPE_CHECKING:
    from .outbox import PgOutbox

__all__ = ["SharedRateLimiters"]

_TAKE = """
WITH spent AS (
    SELECT count(*) AS n, min(at) AS oldest FROM oncall_rate_spent WHERE target = %(t)s AND at > oncall_now() - %(w)s
), ins AS (
    INSERT INTO oncall_rate_spent (target, at) SELECT %(t)s, oncall_now() FROM spent WHERE spent.n < %(c)s
    RETURNING id
)
SELECT (SELECT id FROM ins), spent.oldest + %(w)s - oncall_now() FROM spent
"""


class SharedRateLimiters:
    """Per-target limits held in aggregate by all replicas on the database."""

    def __init__(self, box: "PgOutbox", limits: Dict[str, Optional[RateLimit]]) -> None:
        self._box = box
        self._windows = {name: RateLimiter(lim).window for name, lim in limits.items() if lim is not None}
        self._counts = {name: lim.count for name, lim in limits.items() if lim is not None}
        self._reserved: Dict[str, int] = {}
        #: target -> monotonic time before which no token can be free (see :meth:`wait_time`).
        self._blocked_until: Dict[str, float] = {}
        self._lock = threading.Lock()

    def wait_time(self, target: str) -> float:
        """0 once this replica holds a token for ``target``; else seconds until one may be free."""
        window = self._windows.get(target)
        if window is None:
            return 0.0
        with self._lock:
            if target in self._reserved:
                return 0.0
            # A full window frees its first token only when the oldest spent one leaves it: spent
            # tokens are never given back, so until then asking the database again (a durable
            # transaction on every dispatcher round, under a storm) can only say "wait".
            blocked = self._blocked_until.get(target, 0.0) - time.monotonic()
            if blocked > 0:
                return blocked
        try:
            with self._box._tx(durable=True) as cur:
                cur.execute("INSERT INTO oncall_rate (target) VALUES (%s) ON CONFLICT DO NOTHING", (target,))
                cur.execute("SELECT 1 FROM oncall_rate WHERE target = %s FOR UPDATE", (target,))
                cur.execute("DELETE FROM oncall_rate_spent WHERE target = %s AND at <= oncall_now() - %s",
                            (target, window))
                found = cur.execute(_TAKE, {"t": target, "w": window, "c": self._counts[target]}).fetchone()
        except StoreError:
            return 1.0
        assert found is not None
        if found[0] is not None:
            with self._lock:
                self._reserved[target] = int(found[0])
            return 0.0
        wait = max(0.05, float(found[1] or 0.05))
        with self._lock:
            self._blocked_until[target] = time.monotonic() + wait
        return wait

    def try_acquire(self, target: str) -> bool:
        """Spend the reservation; its time becomes the send time (later, so only stricter)."""
        if target not in self._windows:
            return True
        if self.wait_time(target) > 0:
            return False
        with self._lock:
            token = self._reserved.pop(target, None)
        if token is None:
            return False
        try:
            with self._box._tx(durable=True) as cur:
                cur.execute("UPDATE oncall_rate_spent SET at = oncall_now() WHERE id = %s", (token,))
        except StoreError:
            pass  # the reservation's own time stands; it is at most the wait since wait_time
        return True
