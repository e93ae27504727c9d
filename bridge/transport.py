"""Blocking HTTP to the platforms, and the rules every HTTP attempt follows.

Deliveries go through :mod:`bridge.aio_transport` in the delivery loop; this
module's :class:`Transport` serves the blocking callers (``send-test``,
heartbeats, Alertmanager keep-alive), and its helpers (:func:`check_status`,
:func:`parse_retry_after`, :class:`Response`) are the contract both share.

:class:`Transport` uses urllib3 without requests' per-call layers. It turns
every outcome into one of three things: a :class:`Response` (delivered), a
:class:`~bridge.errors.RetryableError` (network, timeout, 408, 425, 429, 5xx;
with the platform's ``Retry-After`` when given) or a
:class:`~bridge.errors.PermanentError` (any other answer, with status and the
first 2 KB of the body). Messages never contain the URL: platform URLs carry
tokens in their paths, and these messages end up in logs and the outbox.

The timeout is a total deadline per attempt, connect to last byte. Socket
timeouts alone bound each read, so a platform trickling one byte a second would
hold a worker for hours; a single reaper thread shuts down the socket of any
attempt still running at its deadline (:class:`_Deadlines`).
"""

from __future__ import annotations

import email.utils
import errno
import heapq
import http.client
import itertools
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import certifi
import requests.utils
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from .errors import PermanentError, RetryableError
from .targets.base import HttpRequest

__all__ = [
    "MAX_BODY_CHARS",
    "READ_LIMIT",
    "Response",
    "Transport",
    "USER_AGENT",
    "check_status",
    "EnvironProxies",
    "os_reason",
    "parse_retry_after",
]

USER_AGENT = "kapacitor-oncall-bridge/0.1"
#: What we keep of a platform's answer: enough to read the error, not a whole HTML page.
MAX_BODY_CHARS = 2048
#: Read at most this much of a response; a larger body is cut and its connection dropped.
READ_LIMIT = 65536
#: A Retry-After beyond a day is a misconfigured platform, not a plan.
MAX_RETRY_AFTER = 86400.0
_RETRYABLE_STATUS = frozenset({408, 425, 429})
_NUMBER = re.compile(r"^\s*\d+(\.\d+)?\s*$")


@dataclass(frozen=True)
class Response:
    """A delivered request: the platform's status and (truncated) body."""

    status: int
    body: str
    elapsed: float


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _NUMBER.match(text):
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def check_status(
    status: int, body: str, headers: Mapping[str, str], ok: Tuple[int, ...] = (), now: Optional[float] = None
) -> None:
    """Raise the right error for a non-success answer (pure: tested without a network)."""
    body = body[:MAX_BODY_CHARS]
    if (status in ok) if ok else (200 <= status < 300):
        return
    if status in _RETRYABLE_STATUS or 500 <= status < 600:
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        raise RetryableError(f"HTTP {status}", status=status, body=body, retry_after=retry_after)
    if 300 <= status < 400:
        raise PermanentError(f"HTTP {status}: redirect not followed; fix the target url", status=status, body=body)
    if 200 <= status < 300:
        expected = ", ".join(str(s) for s in ok)
        raise PermanentError(f"HTTP {status}: unexpected success status (expected {expected})", status, body)
    raise PermanentError(f"HTTP {status}", status=status, body=body)


def errno_reason(number: int) -> Optional[str]:
    """The OS's text for an errno ("Connection refused"), or None for 0 or an unknown number."""
    return os.strerror(number) if number and number in errno.errorcode else None


def os_reason(exc: BaseException) -> str:
    """The OS-level reason of a connection failure ("Connection refused"), never a URL or an
    address: taken from the errno where there is one (asyncio's and aiohttp's own texts name
    host and port), else the error's ``strerror`` (resolver errors), else its type. Walks the
    wrapped errors of urllib3 (``reason``), aiohttp (``os_error``) and exception chaining."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError):
            reason = errno_reason(current.errno) if isinstance(current.errno, int) else None
            if reason is not None:
                return reason
            if current.strerror:
                return str(current.strerror)
        wrapped = (getattr(current, "os_error", None), getattr(current, "reason", None), current.__cause__,
                   current.__context__, *current.args)
        stack.extend(nxt for nxt in reversed(wrapped) if isinstance(nxt, BaseException))
    return type(exc).__name__


class EnvironProxies:
    """The proxy for a URL from HTTP(S)_PROXY / ALL_PROXY, NO_PROXY honoured (requests' rules),
    read once per origin: the environment does not change under a running bridge, and this
    is on every delivery's path."""

    def __init__(self) -> None:
        self._by_origin: Dict[str, Optional[str]] = {}

    def __call__(self, url: str) -> Optional[str]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._by_origin:
            proxies = requests.utils.get_environ_proxies(origin)
            self._by_origin[origin] = proxies.get(parts.scheme) or proxies.get("all") or None
        return self._by_origin[origin]


class _Watch:
    """One connection of one attempt, armed to be cut at the attempt's deadline."""

    __slots__ = ("conn", "done", "fired")

    def __init__(self, conn: HTTPConnection) -> None:
        self.conn = conn
        self.done = False
        self.fired = False

    def fire(self) -> None:
        sock = getattr(self.conn, "sock", None)
        self.fired = True
        if sock is None:  # still connecting: the connect timeout (= the deadline) ends it
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Deadlines:
    """One daemon thread for all transports: cuts connections whose attempt overran.

    Arming is a heap push (no thread or timer per attempt: the drain rate is
    bounded by per-delivery CPU); finished attempts are dropped lazily.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: List[Tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def arm(self, deadline: float, conn: HTTPConnection) -> _Watch:
        watch = _Watch(conn)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][2] is watch:
                self._cond.notify()
        return watch

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    _, _, watch = heapq.heappop(self._heap)
                    if not watch.done:
                        watch.fire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_DEADLINES = _Deadlines()
_attempt = threading.local()


class _Attempt:
    """The deadline of the attempt running on this thread, and the connections it used."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.watches: List[_Watch] = []

    def watch(self, conn: HTTPConnection) -> None:
        self.watches.append(_DEADLINES.arm(self.deadline, conn))

    @property
    def overran(self) -> bool:
        return any(w.fired for w in self.watches)

    def finish(self) -> None:
        for w in self.watches:
            w.done = True


def _armed_request(conn: HTTPConnection) -> None:
    attempt: Optional[_Attempt] = getattr(_attempt, "current", None)
    if attempt is not None:
        attempt.watch(conn)


class _OneWrite:
    """Head and body of a request leave in one ``sendall``.

    urllib3 writes the header block and then the body: two syscalls and two loopback/TCP
    segments per delivery, the single largest CPU item of an attempt in ``bench/profile.py``.
    While :meth:`request` runs, writes are gathered and go out together at its end;
    nothing is sent if building the request fails."""

    _gathered: Optional[List[bytes]] = None

    def request(self, *args: Any, **kwargs: Any) -> None:
        _armed_request(self)  # type: ignore[arg-type]
        self._gathered = []
        try:
            super().request(*args, **kwargs)  # type: ignore[misc]
            gathered = self._gathered
        finally:
            self._gathered = None
        if gathered:
            super().send(b"".join(gathered))  # type: ignore[misc]

    def send(self, data: Any) -> None:
        gathered = self._gathered
        if gathered is not None:
            if isinstance(data, (bytes, bytearray)):
                gathered.append(bytes(data))
                return
            if gathered:  # anything else (a file): what was gathered goes first, in order
                super().send(b"".join(gathered))  # type: ignore[misc]
                del gathered[:]
        super().send(data)  # type: ignore[misc]


class _Connection(_OneWrite, HTTPConnection):
    pass


class _TLSConnection(_OneWrite, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class Transport:
    """Sends :class:`HttpRequest` values for one target over pooled, verified connections."""

    def __init__(self, *, timeout: float, ca_file: Optional[str] = None, pool_size: int = 8) -> None:
        self.timeout = timeout
        # TLS verification is always on; a private CA is added, never verification removed.
        self.ca_certs = ca_file or _env_ca_bundle() or certifi.where()
        self._pool_size = max(1, pool_size)
        self.pool = self._manager(None)
        self._proxied: Dict[str, urllib3.PoolManager] = {}
        # HTTP(S)_PROXY / NO_PROXY are read once per origin, not on every request.
        self._proxy_for = EnvironProxies()

    def _manager(self, proxy: Optional[str]) -> urllib3.PoolManager:
        options = dict(
            num_pools=4,
            maxsize=self._pool_size,
            cert_reqs="CERT_REQUIRED",
            ca_certs=self.ca_certs,
            retries=False,
            headers={"User-Agent": USER_AGENT},
        )
        if proxy:
            manager: urllib3.PoolManager = urllib3.ProxyManager(proxy, **options)  # type: ignore[arg-type]
        else:
            manager = urllib3.PoolManager(**options)  # type: ignore[arg-type]
        manager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
        return manager

    def _manager_for(self, url: str) -> urllib3.PoolManager:
        proxy = self._proxy_for(url)
        if not proxy:
            return self.pool
        manager = self._proxied.get(proxy)
        if manager is None:
            manager = self._proxied[proxy] = self._manager(proxy)
        return manager

    def send(self, request: HttpRequest, timeout: Optional[float] = None) -> Response:
        """One attempt of at most ``timeout`` seconds in total. Returns the answer on
        success, raises Retryable/PermanentError otherwise."""
        limit = self.timeout if timeout is None else timeout
        started = time.monotonic()
        attempt = _Attempt(started + limit)
        _attempt.current = attempt
        try:
            status, raw, answer_headers = self._exchange(request, limit, attempt)
        except (HTTPError, OSError, http.client.HTTPException):
            if attempt.overran:
                raise RetryableError(f"timeout: no complete answer within {limit:g}s") from None
            raise
        finally:
            _attempt.current = None
            attempt.finish()
        body = raw[:READ_LIMIT].decode("utf-8", "replace")
        check_status(status, body, answer_headers, request.ok)
        return Response(status=status, body=body[:MAX_BODY_CHARS], elapsed=time.monotonic() - started)

    def _exchange(self, request: HttpRequest, limit: float, attempt: _Attempt) -> Tuple[int, bytes, Mapping[str, str]]:
        headers = {"User-Agent": USER_AGENT, **request.headers}
        try:
            resp = self._manager_for(request.url).request(
                request.method,
                request.url,
                body=request.body,
                headers=headers,
                timeout=urllib3.Timeout(connect=limit, read=limit),
                redirect=False,
                retries=False,
                preload_content=False,
            )
            try:
                raw = resp.read(READ_LIMIT + 1)
            except BaseException:
                resp.close()
                raise
            if attempt.overran:
                # Cut while reading a body without a length: what arrived may be partial.
                resp.close()
                raise ReadTimeoutError(None, request.url, "deadline")  # type: ignore[arg-type]
            if len(raw) > READ_LIMIT:
                resp.close()  # body left unread: the connection cannot be reused
            else:
                resp.release_conn()
            return resp.status, raw, resp.headers
        except SSLError as exc:
            if attempt.overran:
                raise
            text = str(exc)
            what = "certificate verification failed" if "CERTIFICATE_VERIFY_FAILED" in text else "TLS handshake failed"
            raise RetryableError(f"TLS error: {what} (set ca_file for a private CA)") from None
        except NewConnectionError as exc:
            raise RetryableError(f"connection failed: {os_reason(exc)}") from None
        except ConnectTimeoutError:
            raise RetryableError(f"connect timeout after {limit:g}s") from None
        except ReadTimeoutError:
            if attempt.overran:
                raise
            raise RetryableError(f"timeout after {limit:g}s") from None
        except (LocationValueError, ValueError):
            raise PermanentError("invalid target url") from None
        except HTTPError as exc:
            if attempt.overran:
                raise
            raise RetryableError(f"connection failed: {os_reason(exc)}") from None
        except OSError as exc:
            if attempt.overran:
                raise
            raise RetryableError(f"connection failed: {exc.strerror or type(exc).__name__}") from None

    def close(self) -> None:
        self.pool.clear()
        for manager in self._proxied.values():
            manager.clear()


def _env_ca_bundle() -> Optional[str]:
    """The CA bundle requests itself would take from the environment."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
