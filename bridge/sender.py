"""One attempt to a platform: HTTP through a pooled transport per target, or SMTP."""

from __future__ import annotations

import threading
import time
from typing import Dict

from .config import DeliveryConfig, TargetConfig
from .errors import PermanentError
from .event import AlertEvent
from .targets.base import EmailMessage, HttpRequest, Request
from .transport import Response, Transport

__all__ = ["Sender", "send_once"]


class Sender:
    """Sends rendered requests for configured targets: HTTP via a pooled :class:`Transport`
    per target, e-mail via :func:`bridge.smtp.send_email` (imported when first needed)."""

    def __init__(self, delivery: DeliveryConfig) -> None:
        self._delivery = delivery
        self._transports: Dict[str, Transport] = {}
        self._lock = threading.Lock()

    def _transport(self, target: TargetConfig) -> Transport:
        with self._lock:
            transport = self._transports.get(target.name)
            if transport is None:
                transport = Transport(
                    timeout=target.timeout or self._delivery.timeout,
                    ca_file=target.ca_file,
                    pool_size=self._delivery.workers,
                )
                self._transports[target.name] = transport
            return transport

    def send(self, target: TargetConfig, request: Request) -> Response:
        """One attempt; raises RetryableError / PermanentError like the transport."""
        timeout = target.timeout or self._delivery.timeout
        if isinstance(request, HttpRequest):
            return self._transport(target).send(request, timeout)
        if isinstance(request, EmailMessage):
            try:
                from .smtp import send_email
            except ImportError as exc:
                raise PermanentError(f"e-mail delivery unavailable: {exc}") from None
            started = time.monotonic()
            send_email(request, target.target, timeout, ca_file=target.ca_file)
            return Response(status=250, body="accepted by SMTP server", elapsed=time.monotonic() - started)
        raise PermanentError(f"target rendered an unsupported request type {type(request).__name__}")

    def close(self) -> None:
        with self._lock:
            transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            transport.close()


def send_once(sender: Sender, target: TargetConfig, event: AlertEvent) -> Response:
    """Render and send one event outside the outbox (``send-test``)."""
    return sender.send(target, target.target.render(event))
