"""HTTP for the delivery engine: aiohttp's client in the delivery event loop.

Why aiohttp's client (already a dependency, for the server): posting to the fast local
receiver it costs ~90 µs of CPU per request against ~400 µs for urllib3 driven by
worker threads, and one event loop replaces eight threads contending for the GIL.
It also gives what the threaded transport had to build by hand: pooled keep-alive
connections, a *total* deadline per attempt (``ClientTimeout(total=…)``: a platform
trickling one byte a second is cut at the deadline, no reaper thread), TLS through an
``ssl.SSLContext`` and proxies with CONNECT for https.

The contract is :mod:`bridge.transport`'s, shared through its helpers: a
:class:`~bridge.transport.Response` on success, :class:`~bridge.errors.RetryableError`
for network errors, timeouts, 408/425/429/5xx (with ``Retry-After``),
:class:`~bridge.errors.PermanentError` for other answers (status + first 2 KB),
redirects never followed, at most 64 KB read, TLS failures named, and messages that
never contain the URL (platform URLs carry tokens).

``send-test`` and heartbeats keep the synchronous :class:`bridge.transport.Transport`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Dict, Mapping, Optional, Tuple

import aiohttp
import certifi
from yarl import URL

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
    os_reason,
)

__all__ = ["AsyncTransport"]

_Proxy = Tuple[Optional[str], Optional[aiohttp.BasicAuth]]


class AsyncTransport:
    """Sends :class:`HttpRequest` values for one target from the delivery loop.

    The session is made on first use inside the running loop (aiohttp binds it there);
    :meth:`close` must run in that same loop."""

    def __init__(self, *, timeout: float, ca_file: Optional[str] = None, limit: int = 8) -> None:
        self.timeout = timeout
        # TLS verification is always on; a private CA is added, never verification removed.
        self.ca_certs = ca_file or _env_ca_bundle() or certifi.where()
        self._limit = max(1, limit)
        # Made now (loading a CA bundle takes tens of ms), not on the first delivery.
        self._ssl = ssl.create_default_context(cafile=self.ca_certs)
        self._session: Optional[aiohttp.ClientSession] = None
        self._deadline = aiohttp.ClientTimeout(total=timeout)
        self._proxy_for = EnvironProxies()
        #: A proxy URL's credentials go in ``proxy_auth`` (aiohttp wants them apart), split once.
        self._proxy_auth: Dict[str, _Proxy] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),  # platforms' cookies are never sent back
            trust_env=False,  # proxies are resolved here once per origin (see _proxy)
        )
        return self._session

    def _proxy(self, url: str) -> _Proxy:
        proxy = self._proxy_for(url)
        if proxy is None:
            return None, None
        found = self._proxy_auth.get(proxy)
        if found is None:
            parsed = URL(proxy)
            if parsed.user is None:
                found = (proxy, None)
            else:
                found = (str(parsed.with_user(None)), aiohttp.BasicAuth(parsed.user, parsed.password or ""))
            self._proxy_auth[proxy] = found
        return found

    async def send(self, request: HttpRequest) -> Response:
        """One attempt of at most the target's ``timeout`` in total, connect to last byte."""
        started = time.monotonic()
        status, raw, headers = await self._exchange(request)
        body = raw[:READ_LIMIT].decode("utf-8", "replace")
        check_status(status, body, headers, request.ok)
        return Response(status=status, body=body[:MAX_BODY_CHARS], elapsed=time.monotonic() - started)

    async def _exchange(self, request: HttpRequest) -> Tuple[int, bytes, Mapping[str, str]]:
        session = self._session or self._open()
        try:
            proxy, proxy_auth = self._proxy(request.url)
            async with session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
                timeout=self._deadline,
                proxy=proxy,
                proxy_auth=proxy_auth,
            ) as resp:
                raw = await _read_limited(resp)
                if len(raw) > READ_LIMIT:
                    resp.close()  # the rest is left unread: the connection cannot be reused
                return resp.status, raw, resp.headers
        except (asyncio.TimeoutError, TimeoutError):
            raise RetryableError(f"timeout: no complete answer within {self.timeout:g}s") from None
        except aiohttp.ClientConnectorCertificateError:
            raise RetryableError("TLS error: certificate verification failed (set ca_file for a private CA)") from None
        except (aiohttp.ClientSSLError, ssl.SSLError):
            raise RetryableError("TLS error: TLS handshake failed (set ca_file for a private CA)") from None
        except aiohttp.ClientConnectorError as exc:
            raise RetryableError(f"connection failed: {os_reason(exc)}") from None
        except (aiohttp.InvalidURL, ValueError):
            raise PermanentError("invalid target url") from None
        except aiohttp.ClientResponseError as exc:
            # A malformed answer (bad status line or headers): aiohttp's message may quote the URL.
            raise RetryableError(f"connection failed: invalid answer ({type(exc).__name__})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RetryableError(f"connection failed: {os_reason(exc)}") from None

    async def close(self) -> None:
        """Close the pooled connections; TLS ones finish closing over the next ~0.25 s of the
        loop (aiohttp's advice: the caller lets the loop run that long before ending it)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    """The body, or its first ``READ_LIMIT + 1`` bytes when it is longer."""
    length = resp.content_length
    if length is not None and length <= READ_LIMIT:
        return await resp.read()
    chunks = []
    size = 0
    while size <= READ_LIMIT:
        chunk = await resp.content.read(READ_LIMIT + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
