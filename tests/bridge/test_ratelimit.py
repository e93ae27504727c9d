"""Rate limiter with an injected clock: never more than N per window, nothing dropped."""

from __future__ import annotations

from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.ratelimit import RateLimiter, RateLimiters
from bridge.targets.base import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestRateLimiter:
    def test_burst_then_block(self) -> None:
        """A full window's worth goes at once; the next waits for the oldest to age out."""
        clock = Clock()
        limiter = RateLimiter(RateLimit(3, 1.0), clock, margin=0.0)
        assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
        assert limiter.wait_time() == 1.0
        clock.now += 0.5
        assert not limiter.try_acquire()
        assert limiter.wait_time() == 0.5
        clock.now += 0.5
        assert limiter.try_acquire()
        assert limiter.available == 2

    def test_no_double_burst(self) -> None:
        """Unlike a full token bucket, the first window never allows 2N."""
        clock = Clock()
        limiter = RateLimiter(RateLimit(10, 60.0), clock, margin=0.0)
        sent = 0
        for _ in range(600):  # one attempt every 0.1 s for a minute
            sent += limiter.try_acquire()
            clock.now += 0.1
        assert sent == 10

    def test_default_margin(self) -> None:
        """The window is stretched by 50 ms + 2 % (at most 1 s) to absorb send jitter."""
        assert abs(RateLimiter(RateLimit(1, 10.0)).window - 10.25) < 1e-9
        assert RateLimiter(RateLimit(1, 300.0)).window == 301.0

    @settings(max_examples=60, deadline=None)
    @given(
        count=st.integers(1, 8),
        seconds=st.sampled_from([0.5, 1.0, 5.0]),
        steps=st.lists(st.floats(0.0, 0.7, allow_nan=False), min_size=1, max_size=200),
    )
    def test_every_window_bounded(self, count: int, seconds: float, steps: List[float]) -> None:
        """Property: any window of the configured length holds at most ``count`` grants."""
        clock = Clock()
        limiter = RateLimiter(RateLimit(count, seconds), clock)
        grants: List[float] = []
        for step in steps:
            clock.now += step
            if limiter.try_acquire():
                grants.append(clock.now)
        for i, start in enumerate(grants):
            inside = [t for t in grants[i:] if t < start + seconds]
            assert len(inside) <= count


class TestRateLimiters:
    def test_unlimited_targets_pass(self) -> None:
        """A target with no limit (``rate_limit = "off"``) is never held back."""
        clock = Clock()
        limiters = RateLimiters({"a": RateLimit(1, 1.0), "b": None}, clock)
        assert limiters.try_acquire("a") and not limiters.try_acquire("a")
        assert all(limiters.try_acquire("b") for _ in range(100))
        assert limiters.wait_time("b") == 0.0
        assert limiters.wait_time("a") > 0.9
        assert limiters.get("b") is None
