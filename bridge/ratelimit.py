"""Per-target rate limiting: stay under the platform's documented limit, never drop.

Platforms state their limits as "N requests per window" (OnCall 300 per 5 min,
PagerDuty ~120 per minute). A classic token bucket that starts full lets
``2 * N`` through in the first window (the full bucket plus its refill), which is
exactly the burst that gets a 429. This limiter is a token bucket whose tokens
come back one window after they were spent (a sliding-window log), so *every*
window of the configured length holds at most ``N`` sends. A small safety
margin covers the jitter between our send and the platform's clock.

The dispatcher asks before claiming a row; when no token is free the row stays
pending in the outbox and the dispatcher sleeps until :meth:`wait_time` says
a token is back. Nothing is ever dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, Optional

from .targets.base import RateLimit

__all__ = ["RateLimiter", "RateLimiters"]

Clock = Callable[[], float]


class RateLimiter:
    """At most ``limit.count`` acquisitions in any ``limit.seconds`` window."""

    def __init__(self, limit: RateLimit, clock: Clock = time.monotonic, margin: Optional[float] = None) -> None:
        self.limit = limit
        self._clock = clock
        #: 50 ms plus 2 % of the window, at most one second: a send is timed when it starts,
        #: the platform counts when it lands, and the two differ by network and scheduling jitter.
        self.window = limit.seconds + (min(1.0, 0.05 + 0.02 * limit.seconds) if margin is None else margin)
        self._spent: Deque[float] = deque()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0] <= now - self.window:
            self._spent.popleft()

    def try_acquire(self) -> bool:
        """Take a token if one is free now."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if len(self._spent) < self.limit.count:
                self._spent.append(now)
                return True
            return False

    def wait_time(self) -> float:
        """Seconds until a token is free (0 when one is free now)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if len(self._spent) < self.limit.count:
                return 0.0
            return max(0.0, self._spent[0] + self.window - now)

    @property
    def available(self) -> int:
        """Tokens free right now."""
        with self._lock:
            self._expire(self._clock())
            return self.limit.count - len(self._spent)


class RateLimiters:
    """One limiter per target name; targets without a limit always pass."""

    def __init__(self, limits: Dict[str, Optional[RateLimit]], clock: Clock = time.monotonic) -> None:
        self._limiters = {name: RateLimiter(lim, clock) for name, lim in limits.items() if lim is not None}

    def try_acquire(self, target: str) -> bool:
        """Take a token for ``target`` (always True when it has no limit)."""
        limiter = self._limiters.get(target)
        return True if limiter is None else limiter.try_acquire()

    def wait_time(self, target: str) -> float:
        """Seconds until ``target`` may send again."""
        limiter = self._limiters.get(target)
        return 0.0 if limiter is None else limiter.wait_time()

    def get(self, target: str) -> Optional[RateLimiter]:
        return self._limiters.get(target)
