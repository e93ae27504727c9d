"""One delivery attempt as values: what goes out (:class:`Job`) and what it came to (:class:`Verdict`).

Pure translation, no I/O: :func:`expired` and :func:`dead` give what a claimed row becomes
without a send (max_age passed, unparsable or unrenderable event), :func:`judge`
turns an attempt's answer or error into the outcome to record, the metric to
count and the log line to write. :mod:`bridge.delivery` does the I/O around them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

from .errors import DeliveryError, PermanentError, RetryableError
from .retry import RetryPolicy
from .store import Head, Outcome, Row
from .targets.base import Request
from .transport import MAX_BODY_CHARS, Response

__all__ = ["Job", "Verdict", "dead", "expired", "judge"]


@dataclass(frozen=True)
class Job:
    """A claimed head ready to send: its rendered request, attempt number and max_age deadline."""

    head: Head
    request: Request
    attempt: int
    deadline: float


@dataclass(frozen=True)
class Verdict:
    """An outcome to record, the ``oncall_deliveries_total`` outcome to count, and a log line."""

    outcome: Outcome
    counted: str
    event: str
    level: str = "info"
    fields: Dict[str, Any] = field(default_factory=dict)


def dead(head: Head, attempts: int, error: str, status: Optional[int], body: str) -> Verdict:
    """A dead letter, keeping the platform's status and the start of its answer."""
    full = f"{error}: {body[:MAX_BODY_CHARS]}" if body else error
    return Verdict(
        Outcome(head, "dead", attempts=attempts, error=full, status=status),
        "dead",
        "delivery.dead",
        "error",
        dict(
            attempts=attempts,
            status=status,
            error=error,
            body=body[:500],
            # A lost resolve is the orphaned-incident case: make it impossible to miss.
            resolve=head.level == "OK",
        ),
    )


def expired(head: Head, row: Row, now: float, max_age: float) -> Optional[Verdict]:
    """Dead before attempt ``attempts + 1`` if max_age passed while the row waited (the bridge
    was down or saturated), unless this is the final attempt scheduled at the deadline."""
    deadline = row.queued_at + max_age
    if not (now > deadline and row.next_attempt_at < deadline):
        return None
    why = f"max_age exceeded before attempt {row.attempts + 1}"
    error = f"{why}; last error: {row.last_error}" if row.last_error else why
    return dead(head, row.attempts, error, row.last_status, "")


def judge(
    job: Job, result: Union[Response, BaseException], now: float, policy: RetryPolicy
) -> Verdict:
    """What an attempt came to: delivered, retried (backoff or Retry-After), or dead."""
    head, attempt = job.head, job.attempt
    if isinstance(result, Response):
        return Verdict(
            Outcome(head, "delivered", attempts=attempt, status=result.status),
            "delivered",
            "delivery.ok",
            "info",
            dict(attempt=attempt, status=result.status, seconds=round(result.elapsed, 4)),
        )
    if isinstance(result, PermanentError):
        return dead(head, attempt, str(result), result.status, result.body)
    if isinstance(result, RetryableError):
        error = result
    elif isinstance(result, DeliveryError):
        error = RetryableError(str(result), result.status, result.body)
    else:  # unknown failure: keep the alert, try again
        error = RetryableError(f"{type(result).__name__}: {result}")
    if now >= job.deadline:
        return dead(head, attempt, f"max_age exceeded after {attempt} attempts: {error}", error.status, error.body)
    next_at = min(now + policy.delay(attempt, error.retry_after), job.deadline)
    text = str(error) if not error.body else f"{error}: {error.body[:MAX_BODY_CHARS]}"
    return Verdict(
        Outcome(head, "pending", attempts=attempt, next_at=next_at, error=text, status=error.status),
        "retry",
        "delivery.retry",
        "warning",
        dict(
            attempt=attempt,
            status=error.status,
            error=str(error),
            next_in=round(next_at - now, 3),
            retry_after=error.retry_after,
        ),
    )
