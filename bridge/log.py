"""Structured JSON logs on stderr, with every configured secret scrubbed from every value.

Only entry points call :func:`configure`. The :class:`Redactor` is one shared
processor whose secret set is replaced once the config is loaded (logging has
to work before that, to report a bad config). It walks every value of every
event (strings, nested dicts and lists, formatted tracebacks), so a token that
slips into an exception message still never reaches the log. stdlib logging
(aiohttp, urllib3) and uncaught thread exceptions are routed through the same
pipeline for the same reason.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any, Dict, Iterable, Optional, Pattern, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

__all__ = ["MASK", "Redactor", "configure", "get_logger", "redactor"]

MASK = "***"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Redactor:
    """A structlog processor (and plain function) replacing secrets by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._pattern: Optional[Pattern[str]] = None
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Replace the secret set; longest first so a URL is masked before its token."""
        unique = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in unique)) if unique else None

    def redact(self, text: str) -> str:
        """``text`` with every secret masked."""
        pattern = self._pattern
        return text if pattern is None else pattern.sub(MASK, text)

    def scrub(self, value: Any) -> Any:
        """Any value, recursively; unknown objects are stringified first."""
        if isinstance(value, str):
            return self.redact(value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.scrub(v) for v in value]
        if isinstance(value, bytes):
            return self.redact(value.decode("utf-8", "replace"))
        return self.redact(str(value))

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if self._pattern is None:
            return event_dict
        return {k: self.scrub(v) for k, v in event_dict.items()}


#: The process-wide redactor; ``configure`` installs it, the CLI feeds it the config's secrets.
redactor = Redactor()


class _SafeStream:
    """A log stream that never raises: a closed or broken stderr must not kill a delivery thread."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass


class _StdlibBridge(logging.Handler):
    """Forward stdlib log records (aiohttp, urllib3) into the structlog pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            level = record.levelname.lower()
            kwargs: Dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                kwargs["exc_info"] = record.exc_info
            getattr(log, level if level in _LEVELS else "error")(record.getMessage(), **kwargs)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure(
    level: str = "info",
    *,
    stream: Optional[TextIO] = None,
    secrets: Iterable[str] = (),
    cache: bool = False,
) -> Redactor:
    """Configure structlog for JSON lines on ``stream`` (stderr) and route stdlib logging."""
    redactor.update(secrets)
    out = stream if stream is not None else sys.stderr
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=_SafeStream(out)),  # type: ignore[arg-type]
        cache_logger_on_first_use=cache,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(logging.WARNING)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        thread = args.thread.name if args.thread is not None else "?"
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        structlog.get_logger("bridge").error("thread.crashed", thread=thread, exc_info=exc_info)

    threading.excepthook = thread_hook
    return redactor


def get_logger(name: str = "bridge") -> Any:
    """A structlog logger; module-level loggers are fine because configuration is lazy."""
    return structlog.get_logger(name)
