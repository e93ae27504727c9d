"""One error tree for the bridge.

::

    BridgeError
    ├── ConfigError          bad or missing configuration key (``key`` names it)
    ├── StoreError           the outbox cannot commit (disk full, read-only, corrupt)
    └── DeliveryError        one delivery attempt failed
        ├── RetryableError   network error, timeout, 408, 429, 5xx: try again later
        └── PermanentError   any other 4xx: dead-letter at once

``EventError`` (bad alert body) lives in :mod:`bridge.event` next to the parser.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "BridgeError",
    "ConfigError",
    "DeliveryError",
    "PermanentError",
    "RetryableError",
    "StoreError",
]


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """Configuration is unusable; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class StoreError(BridgeError):
    """The durable store could not commit; the caller must not acknowledge the alert."""


class DeliveryError(BridgeError):
    """A delivery attempt failed; ``status``/``body`` hold the platform's answer if any."""

    def __init__(self, message: str, status: Optional[int] = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class RetryableError(DeliveryError):
    """Worth another attempt; ``retry_after`` is the platform's own hint in seconds."""

    def __init__(
        self,
        message: str,
        status: Optional[int] = None,
        body: str = "",
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """The platform refused the request for good: dead-letter it with the answer."""
