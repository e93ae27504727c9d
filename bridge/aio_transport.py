"""HTTP for the delivery engine: libcurl (pycurl's multi interface) driven by the delivery
event loop.

Why libcurl: the HTTP exchange, keep-alive pooling, TLS, proxies with CONNECT and the total
deadline all run in C, outside the GIL. The delivery loop was the largest share of a drain's
CPU, and aiohttp's client most of it: posting to the fast local receiver from an asyncio
loop, an attempt cost ~115 µs of CPU with aiohttp and ~65 µs this way (the loop's own
share included). The loop only watches the sockets libcurl names (``M_SOCKETFUNCTION``)
and its one timer (``M_TIMERFUNCTION``), and calls back once per attempt when libcurl
reports it done (:meth:`AsyncTransport.start`; :meth:`~AsyncTransport.send` awaits that).

The contract is :mod:`bridge.transport`'s, shared through its helpers: a
:class:`~bridge.transport.Response` on success, :class:`~bridge.errors.RetryableError`
for network errors, timeouts, 408/425/429/5xx (with ``Retry-After``),
:class:`~bridge.errors.PermanentError` for other answers (status + first 2 KB),
redirects never followed, at most 64 KB read, TLS failures named, and messages that
never contain the URL (platform URLs carry tokens): errors are built from libcurl's
codes and the OS errno, never from its message buffer (which names hosts).

``send-test`` and heartbeats keep the synchronous :class:`bridge.transport.Transport`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

import certifi
import pycurl

from .errors import PermanentError, RetryableError
from .targets.base import HttpRequest
from .transport import (
    MAX_BODY_CHARS,
    READ_LIMIT,
    USER_AGENT,
    EnvironProxies,
    Response,
    _env_ca_bundle,
    check_status,
    errno_reason,
)

__all__ = ["AsyncTransport", "Done"]

#: Called in the loop with an attempt's answer or error (``asyncio.CancelledError`` when the
#: transport closed under it).
Done = Callable[[Union[Response, BaseException]], None]

_DEFAULT_TYPE = "Content-Type: application/octet-stream"
_TLS_UNTRUSTED = "TLS error: certificate verification failed (set ca_file for a private CA)"
_TLS_FAILED = "TLS error: TLS handshake failed (set ca_file for a private CA)"
#: libcurl codes of a TLS failure other than an untrusted certificate.
_TLS_CODES = frozenset(getattr(pycurl, name) for name in (
    "E_SSL_CONNECT_ERROR", "E_SSL_CERTPROBLEM", "E_SSL_CIPHER", "E_SSL_CACERT_BADFILE", "E_SSL_ENGINE_NOTFOUND",
    "E_SSL_ENGINE_SETFAILED", "E_SSL_ENGINE_INITFAILED", "E_SSL_CRL_BADFILE", "E_SSL_ISSUER_ERROR",
    "E_SSL_SHUTDOWN_FAILED", "E_SSL_PINNEDPUBKEYNOTMATCH", "E_SSL_INVALIDCERTSTATUS", "E_USE_SSL_FAILED",
) if hasattr(pycurl, name))
#: A URL libcurl cannot use: fixing it is the operator's job, retrying will not help.
_URL_CODES = frozenset((pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL))
#: An answer that is not HTTP or ends early (libcurl's codes, a stable ABI; pycurl does not
#: name them all): weird server reply, HTTP/2 framing, partial body, bad content encoding,
#: HTTP/2 stream error.
_ANSWER_CODES = frozenset((8, 16, 18, 61, 92))


class _Slot:
    """One easy handle and what its current attempt gathered; reused across attempts (the
    callbacks are bound once, the pooled connections live in the multi handle)."""

    __slots__ = ("easy", "done", "ok", "started", "chunks", "size", "retry_after")

    def __init__(self, easy: pycurl.Curl) -> None:
        self.easy = easy
        self.done: Optional[Done] = None
        self.ok: Tuple[int, ...] = ()
        self.started = 0.0
        self.chunks: List[bytes] = []
        self.size = 0
        self.retry_after: Optional[str] = None

    def write(self, data: bytes) -> Optional[int]:
        self.chunks.append(data)
        self.size += len(data)
        # Returning a short count makes libcurl stop reading and drop the connection.
        return 0 if self.size > READ_LIMIT else None

    def header(self, line: bytes) -> None:
        if line[:5] == b"HTTP/":  # a new answer (after a 1xx or a proxy's CONNECT): headers start afresh
            self.retry_after = None
        elif line[:12].lower() == b"retry-after:":
            self.retry_after = line[12:].decode("latin-1").strip()


class AsyncTransport:
    """Sends :class:`HttpRequest` values for one target from the delivery loop.

    The multi handle is made on first use inside the running loop (its sockets are watched
    there); :meth:`close` must run in that same loop."""

    def __init__(self, *, timeout: float, ca_file: Optional[str] = None, limit: int = 8) -> None:
        self.timeout = timeout
        # TLS verification is always on; a private CA is added, never verification removed.
        self.ca_certs = ca_file or _env_ca_bundle() or certifi.where()
        # Read once now, so an unreadable or malformed CA file fails here, named (the engine
        # logs it per target), not as a handshake error on every attempt.
        ssl.create_default_context(cafile=self.ca_certs)
        self._limit = max(1, limit)
        self._timeout_ms = max(1, int(timeout * 1000))
        self._proxy_for = EnvironProxies()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._multi: Optional[pycurl.CurlMulti] = None
        self._free: List[_Slot] = []
        self._busy: Dict[pycurl.Curl, _Slot] = {}
        self._timer: Optional[asyncio.TimerHandle] = None
        self._soon = False
        self._watched: Dict[int, int] = {}

    # -- libcurl's view of the loop -------------------------------------------------

    def _open(self) -> pycurl.CurlMulti:
        self._loop = asyncio.get_running_loop()
        multi = self._multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket_change)
        multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer_change)
        multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, self._limit)
        multi.setopt(pycurl.M_MAXCONNECTS, self._limit)
        return multi

    def _on_socket_change(self, what: int, fd: int, _multi: object, _data: object) -> None:
        """libcurl says which events of ``fd`` it waits for now (or none: ``POLL_REMOVE``)."""
        loop = self._loop
        assert loop is not None
        had = self._watched.pop(fd, 0)
        want = 0 if what == pycurl.POLL_REMOVE else what  # POLL_IN | POLL_OUT = POLL_INOUT
        if had & pycurl.POLL_IN and not want & pycurl.POLL_IN:
            loop.remove_reader(fd)
        if had & pycurl.POLL_OUT and not want & pycurl.POLL_OUT:
            loop.remove_writer(fd)
        if want & pycurl.POLL_IN and not had & pycurl.POLL_IN:
            loop.add_reader(fd, self._on_ready, fd, pycurl.CSELECT_IN)
        if want & pycurl.POLL_OUT and not had & pycurl.POLL_OUT:
            loop.add_writer(fd, self._on_ready, fd, pycurl.CSELECT_OUT)
        if want:
            self._watched[fd] = want

    def _on_timer_change(self, timeout_ms: int) -> None:
        """libcurl's single timer: -1 stops it, 0 means "call me as soon as you can".

        libcurl moves it around several times per request; a timer already set to fire
        earlier is kept (an early call costs libcurl one look at its clock), so each move is
        not a cancel and a new entry in the loop's timer heap."""
        loop = self._loop
        assert loop is not None
        if timeout_ms < 0:
            return
        if timeout_ms == 0:
            if not self._soon:
                self._soon = True
                loop.call_soon(self._on_soon)
            return
        due = loop.time() + timeout_ms / 1000.0
        timer = self._timer
        if timer is not None and timer.when() <= due:
            return
        if timer is not None:
            timer.cancel()
        self._timer = loop.call_at(due, self._on_timer)

    def _on_soon(self) -> None:
        self._soon = False
        self._on_ready(pycurl.SOCKET_TIMEOUT, 0)

    def _on_timer(self) -> None:
        self._timer = None
        self._on_ready(pycurl.SOCKET_TIMEOUT, 0)

    def _on_ready(self, fd: int, events: int) -> None:
        if self._multi is None:
            return
        while True:
            ret, _running = self._multi.socket_action(fd, events)
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        self._collect()

    def _collect(self) -> None:
        """Call back every attempt libcurl finished."""
        multi = self._multi
        assert multi is not None
        while True:
            queued, ok, failed = multi.info_read()
            for easy in ok:
                self._finish(easy, 0)
            for easy, code, _message in failed:  # the message names hosts: never used
                self._finish(easy, code)
            if not queued:
                return

    def _finish(self, easy: pycurl.Curl, code: int) -> None:
        assert self._multi is not None
        self._multi.remove_handle(easy)
        slot = self._busy.pop(easy)
        done, slot.done = slot.done, None
        raw = b"".join(slot.chunks)
        retry_after = slot.retry_after
        status = int(easy.getinfo(pycurl.RESPONSE_CODE))
        os_errno = int(easy.getinfo(pycurl.OS_ERRNO))
        slot.chunks, slot.size, slot.retry_after = [], 0, None
        easy.setopt(pycurl.POSTFIELDS, b"")  # let go of the body
        self._free.append(slot)
        if done is None:
            return
        result: Union[Response, BaseException]
        if code == 0 or (code == pycurl.E_WRITE_ERROR and len(raw) > READ_LIMIT and status):  # cut by write()
            body = raw[:READ_LIMIT].decode("utf-8", "replace")
            try:
                check_status(status, body, {"Retry-After": retry_after} if retry_after is not None else {}, slot.ok)
            except (RetryableError, PermanentError) as exc:
                result = exc
            else:
                result = Response(status=status, body=body[:MAX_BODY_CHARS], elapsed=time.monotonic() - slot.started)
        else:
            result = self._error(code, os_errno)
        done(result)

    def _error(self, code: int, os_errno: int) -> Exception:
        if code == pycurl.E_OPERATION_TIMEDOUT:
            return RetryableError(f"timeout: no complete answer within {self.timeout:g}s")
        if code == pycurl.E_PEER_FAILED_VERIFICATION:
            return RetryableError(_TLS_UNTRUSTED)
        if code in _TLS_CODES:
            return RetryableError(_TLS_FAILED)
        if code in _URL_CODES:
            return PermanentError("invalid target url")
        if code in _ANSWER_CODES:
            return RetryableError(f"connection failed: invalid answer (libcurl error {code})")
        if code == pycurl.E_GOT_NOTHING:
            return RetryableError("connection failed: the platform closed the connection without answering")
        if code in (pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY):
            what = "host" if code == pycurl.E_COULDNT_RESOLVE_HOST else "proxy"
            return RetryableError(f"connection failed: could not resolve the {what} name")
        reason = errno_reason(os_errno)
        return RetryableError(f"connection failed: {reason or f'libcurl error {code}'}")

    # -- attempts -----------------------------------------------------------------

    def _slot(self) -> _Slot:
        if self._free:
            return self._free.pop()
        easy = pycurl.Curl()
        slot = _Slot(easy)
        easy.setopt(pycurl.NOSIGNAL, 1)
        easy.setopt(pycurl.TIMEOUT_MS, self._timeout_ms)  # connect to last byte, one deadline
        easy.setopt(pycurl.CONNECTTIMEOUT_MS, self._timeout_ms)
        easy.setopt(pycurl.FOLLOWLOCATION, 0)
        easy.setopt(pycurl.USERAGENT, USER_AGENT)
        easy.setopt(pycurl.CAINFO, self.ca_certs)
        easy.unsetopt(pycurl.CAPATH)  # this bundle only, as before: no directory compiled into libcurl
        easy.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        easy.setopt(pycurl.SSL_VERIFYPEER, 1)
        easy.setopt(pycurl.SSL_VERIFYHOST, 2)
        easy.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        easy.setopt(pycurl.WRITEFUNCTION, slot.write)
        easy.setopt(pycurl.HEADERFUNCTION, slot.header)
        return slot

    async def send(self, request: HttpRequest) -> Response:
        """One attempt of at most the target's ``timeout`` in total, connect to last byte."""
        future: "asyncio.Future[Response]" = asyncio.get_running_loop().create_future()

        def done(result: Union[Response, BaseException]) -> None:
            if future.done():
                return
            if isinstance(result, asyncio.CancelledError):
                future.cancel()
            elif isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.start(request, done)
        return await future

    def start(self, request: HttpRequest, done: Done) -> None:
        """:meth:`send` without a coroutine: ``done`` gets the answer or the error, in the loop
        (the engine's path: no task and no future per attempt)."""
        multi = self._multi or self._open()
        slot = self._slot()
        easy = slot.easy
        try:
            easy.setopt(pycurl.URL, request.url)
            easy.setopt(pycurl.PROXY, self._proxy_for(request.url) or "")  # "": no proxy, not even libcurl's own env lookup
        except (pycurl.error, UnicodeError, ValueError):
            self._free.append(slot)
            done(PermanentError("invalid target url"))
            return
        headers = [f"{k}: {v}" for k, v in request.headers.items()]
        if not any(k.lower() == "content-type" for k in request.headers):
            headers.append(_DEFAULT_TYPE)  # libcurl would say a form was posted
        headers.append("Expect:")  # no "100-continue" round trip before larger bodies
        easy.setopt(pycurl.HTTPHEADER, headers)
        easy.setopt(pycurl.POSTFIELDS, request.body)  # the bytes object itself, not a copy
        if request.method == "POST":
            easy.unsetopt(pycurl.CUSTOMREQUEST)
        else:
            easy.setopt(pycurl.CUSTOMREQUEST, request.method)
        slot.done, slot.ok, slot.started = done, request.ok, time.monotonic()
        self._busy[easy] = slot
        multi.add_handle(easy)  # libcurl asks for a timer of 0 ms: the loop starts the transfer

    async def close(self) -> None:
        """Drop the pooled connections; attempts still running end as cancelled."""
        multi, self._multi = self._multi, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if multi is None:
            return
        loop = self._loop
        assert loop is not None
        for fd in self._watched:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        self._watched.clear()
        busy, self._busy = list(self._busy.values()), {}
        for slot in busy:
            multi.remove_handle(slot.easy)
        for slot in busy:
            done, slot.done = slot.done, None
            if done is not None:
                done(asyncio.CancelledError())
        multi.close()
        for slot in busy + self._free:  # the interrupted attempts' handles too, not left to the GC
            slot.easy.close()
        self._free.clear()
