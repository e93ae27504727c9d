"""How long a failed delivery waits: exponential backoff with jitter, from tenacity."""

from __future__ import annotations

from typing import Any, Optional

import tenacity

__all__ = ["RetryPolicy"]


class RetryPolicy:
    """Exponential backoff with jitter, computed by tenacity's wait strategy.

    The schedule lives in the outbox row (``attempts``), not in a sleeping
    thread, so we call the strategy with a bare ``RetryCallState`` holding the
    attempt number instead of running ``Retrying`` around a blocking call.
    """

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._wait = _exponential_jitter(initial, maximum)
        self._retrying = tenacity.Retrying(wait=self._wait)

    def delay(self, attempts: int, retry_after: Optional[float] = None) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones."""
        if retry_after is not None:
            return retry_after
        state = tenacity.RetryCallState(self._retrying, None, (), {})
        state.attempt_number = max(1, attempts)
        return float(self._wait(state))


def _exponential_jitter(initial: float, maximum: float) -> Any:
    """``wait_exponential_jitter`` across tenacity versions (``initial`` became ``multiplier``)."""
    try:
        return tenacity.wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)
    except TypeError:  # tenacity < 9.1 has no ``multiplier``
        return tenacity.wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)
