"""The delivery event loop: every attempt runs in one thread of its own.

Not the HTTP server's loop, so a slow attempt or a burst of completions never
delays a 202, and not the dispatcher's thread, so a slow store call never holds
up answers arriving from platforms. Jobs come in batches from the dispatcher
(one ``call_soon_threadsafe`` per batch) and results go back in batches: every
attempt finished in one pass of the loop is reported by one call, so the thread
hand-offs are per batch, not per delivery.

An HTTP attempt is a libcurl transfer that calls back when done
(:meth:`bridge.aio_transport.AsyncTransport.start`, one pool of connections per target):
no task or coroutine per attempt. E-mail keeps the blocking SMTP client, run in the
loop's executor from a coroutine.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple, Union

from . import supervise
from .aio_transport import AsyncTransport
from .attempt import Job
from .config import DeliveryConfig, TargetConfig
from .errors import DeliveryError
from .log import get_logger
from .sender import Sender
from .targets.base import HttpRequest
from .transport import Response

__all__ = ["Engine", "Finished"]

log = get_logger("bridge.delivery")

#: One finished attempt: the job, its answer or error, and its duration in seconds.
Finished = Tuple[Job, Union[Response, BaseException], float]


class Engine:
    """Runs attempts concurrently in a private event loop and reports them in batches."""

    def __init__(
        self,
        delivery: DeliveryConfig,
        targets: Mapping[str, TargetConfig],
        report: Callable[[List[Finished]], None],
        *,
        sender: Sender,
        stopping: Callable[[], bool],
    ) -> None:
        self._delivery = delivery
        self._targets = targets
        self._report = report
        self._sender = sender  # blocking SMTP, in the executor
        self._stopping = stopping
        self._transports: Dict[str, AsyncTransport] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._started = threading.Event()
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._finished: List[Finished] = []
        #: Attempts handed in and not yet reported (read by :meth:`drain` from another thread).
        self._running = 0
        self._idle = threading.Condition()

    # -- lifecycle (any thread) -------------------------------------------------------

    def start(self) -> None:
        thread = self._thread = supervise.start("delivery-loop", self._run, stopping=self._stopping)
        while not self._started.wait(0.05) and thread.is_alive():
            pass

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, jobs: List[Job]) -> None:
        """Start ``jobs`` in the loop (one wake-up of the loop for the whole batch)."""
        if not jobs:
            return
        assert self._loop is not None
        with self._idle:
            self._running += len(jobs)
        self._loop.call_soon_threadsafe(self._begin, jobs)

    def drain(self, deadline: float) -> bool:
        """Wait (until ``deadline``, monotonic) for every attempt handed in to be reported."""
        with self._idle:
            while self._running > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Close the sessions and end the loop thread (after :meth:`drain`)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout)
        except Exception:  # noqa: BLE001 - closing sessions must not block the stop
            log.warning("delivery.loop_close_failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    # -- the loop thread --------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        for target in self._targets.values():
            try:
                self._transport(target)  # TLS contexts ready before the first delivery
            except Exception:  # noqa: BLE001 - an unreadable ca_file fails that target's attempts, named
                log.error("delivery.tls_setup_failed", target=target.name, exc_info=True)
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.close()

    def _transport(self, target: TargetConfig) -> AsyncTransport:
        transport = self._transports.get(target.name)
        if transport is None:
            transport = AsyncTransport(
                timeout=target.timeout or self._delivery.timeout,
                ca_file=target.ca_file,
                limit=self._delivery.workers,
            )
            self._transports[target.name] = transport
        return transport

    def _begin(self, jobs: List[Job]) -> None:
        assert self._loop is not None
        for job in jobs:
            request = job.request
            if isinstance(request, HttpRequest):
                self._start_http(job, request)
                continue
            task = self._loop.create_task(self._attempt(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _start_http(self, job: Job, request: HttpRequest) -> None:
        """An HTTP attempt is a libcurl transfer with a callback: no task, no coroutine."""
        started = time.monotonic()

        def done(result: Union[Response, BaseException]) -> None:
            if not isinstance(result, asyncio.CancelledError):  # the loop is closing: not reported
                self._finish(job, result, started)

        try:
            self._transport(self._targets[job.head.target]).start(request, done)
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable ca_file: the dispatcher retries it
            log.error("delivery.send_failed", target=job.head.target, id=job.head.key, exc_info=True)
            self._finish(job, exc, started)

    async def _attempt(self, job: Job) -> None:
        """An e-mail attempt: the blocking SMTP client in the loop's executor."""
        started = time.monotonic()
        result: Union[Response, BaseException]
        try:
            target = self._targets[job.head.target]
            result = await asyncio.get_running_loop().run_in_executor(None, self._sender.send, target, job.request)
        except DeliveryError as exc:
            result = exc
        except Exception as exc:  # noqa: BLE001 - unknown failure: the dispatcher retries it
            log.error("delivery.send_failed", target=job.head.target, id=job.head.key, exc_info=True)
            result = exc
        self._finish(job, result, started)

    def _finish(self, job: Job, result: Union[Response, BaseException], started: float) -> None:
        if not self._finished:
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        self._finished.append((job, result, time.monotonic() - started))

    def _flush(self) -> None:
        """Report every attempt finished in this pass of the loop, in one call."""
        batch, self._finished = self._finished, []
        try:
            self._report(batch)
        finally:
            with self._idle:
                self._running -= len(batch)
                if self._running <= 0:
                    self._idle.notify_all()
