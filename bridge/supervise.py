"""Internal threads that must not die quietly.

The bridge's writer, dispatcher and delivery workers each catch what they can
handle. If one still dies (a bug, ``MemoryError``) or returns while the bridge
is not stopping, a half-working process is worse than none: posts would queue
in memory and time out, deliveries would stall, and /healthz might still pass.
So the process logs one clear line and exits non-zero; systemd (``Restart=``)
starts it again and the store resumes where it was (at-least-once).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable, NoReturn

from .log import get_logger

__all__ = ["EXIT_THREAD_DIED", "die", "start"]

#: Exit status when an internal thread died (EX_SOFTWARE).
EXIT_THREAD_DIED = 70

log = get_logger("bridge.supervise")


def _exit(status: int) -> NoReturn:
    """Leave at once: other threads may hold locks a normal shutdown would wait on."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


#: Replaced by tests that check a death is noticed without ending the test process.
exit_process: Callable[[int], None] = _exit


def die(thread: str, why: str, exc: BaseException | None = None) -> None:
    """Log the death of ``thread`` and end the process with :data:`EXIT_THREAD_DIED`."""
    log.critical(
        "thread.died",
        thread=thread,
        why=why,
        error=None if exc is None else f"{type(exc).__name__}: {exc}",
        exc_info=exc,
        action="exiting so the service manager restarts the bridge",
    )
    exit_process(EXIT_THREAD_DIED)


def start(name: str, body: Callable[[], None], *, stopping: Callable[[], bool]) -> threading.Thread:
    """Run ``body`` in a daemon thread; if it raises, or returns while ``stopping()`` is
    false, the process ends (see the module docstring)."""

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - any escape is a death
            die(name, "raised", exc)
            return
        if not stopping():
            die(name, "returned while the bridge was running")

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
