"""Refused requests: a JSON body for every error answer, and a log line for each refusal.

Kapacitor logs only ``unknown error, use .captureResponse()`` for a 4xx unless the
TICKscript captures the answer, so the bridge's own log is often the only place an
operator learns that alerts are being refused (a wrong token after a rotation, a
renamed target). Each refusal is logged with status, reason, target and remote
address, never the credentials; per status at most :data:`BURST` lines per
:data:`WINDOW` seconds, and the next line after a quiet spell says how many were
left out, so a misconfigured task posting every second cannot flood the log.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

from aiohttp import web

from .log import get_logger

__all__ = ["BURST", "WINDOW", "RejectionLog", "json_error", "json_errors"]

log = get_logger("bridge.server")

#: Lines per status per window before refusals of that status are only counted.
BURST = 10
WINDOW = 60.0
#: Target names and paths come from the client: cap what of them reaches the log.
_MAX_CLIENT_TEXT = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, headers: Optional[Dict[str, str]] = None, **extra: Any) -> web.Response:
    """The one shape of every error answer: ``{"status": "error", "error": …, …}``."""
    return web.json_response({"status": "error", "error": message, **extra}, status=status, headers=headers)


class RejectionLog:
    """Rate-limited ``request.rejected`` log lines, per HTTP status."""

    def __init__(self, burst: int = BURST, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        #: status -> (window start, lines logged in it, refusals left out since the last line)
        self._state: Dict[int, Tuple[float, int, int]] = {}

    def record(self, request: web.Request, status: int, reason: str, target: Optional[str] = None, **extra: Any) -> bool:
        """Log one refusal unless this status is over its budget; True when a line was written."""
        now = self._clock()
        with self._lock:
            start, lines, left_out = self._state.get(status, (now, 0, 0))
            if now - start >= self._window:
                start, lines = now, 0
            if lines >= self._burst:
                self._state[status] = (start, lines, left_out + 1)
                return False
            self._state[status] = (start, lines + 1, 0)
        fields: Dict[str, Any] = {
            "status": status,
            "reason": reason,
            "method": request.method,
            "path": _clip(request.path),
            "remote": request.remote,
        }
        if target is not None:
            fields["target"] = _clip(target)
        if left_out:
            fields["not_logged_since_last"] = left_out
        log.warning("request.rejected", **fields, **extra)
        return True


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_CLIENT_TEXT else text[:_MAX_CLIENT_TEXT] + "…"


def json_errors(rejections: RejectionLog) -> Any:
    """Middleware: aiohttp's own refusals (no such path, wrong method, …) answer JSON too,
    and an unexpected exception is a logged JSON 500, never a text page."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = _reason(request, exc)
            rejections.record(request, exc.status, reason)
            headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
            return json_error(exc.status, reason, headers=headers)
        except Exception:  # noqa: BLE001 - a bug must still answer JSON, and be logged
            log.error("request.crashed", method=request.method, path=_clip(request.path), exc_info=True)
            return json_error(500, "internal error (see bridge log)")

    return middleware


def _reason(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} not allowed on {_clip(request.path)} (allowed: {allowed})"
    if isinstance(exc, web.HTTPNotFound):
        return f"no such path: {_clip(request.path)}"
    return exc.reason
