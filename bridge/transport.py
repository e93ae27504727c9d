"""HTTP to the platforms: one ``requests.Session`` per target, answers mapped to our errors.

This is the only module that talks HTTP for deliveries. It turns every outcome
into one of three things: a :class:`Response` (delivered), a
:class:`~bridge.errors.RetryableError` (network, timeout, 408, 425, 429, 5xx;
with the platform's ``Retry-After`` when given) or a
:class:`~bridge.errors.PermanentError` (any other answer, with status and the
first 2 KB of the body). Messages never contain the URL: platform URLs carry
tokens in their paths, and these messages end up in logs and the outbox.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

import requests
import requests.adapters

from .errors import PermanentError, RetryableError
from .targets.base import HttpRequest

__all__ = [
    "MAX_BODY_CHARS",
    "Response",
    "Transport",
    "USER_AGENT",
    "check_status",
    "parse_retry_after",
]

USER_AGENT = "kapacitor-oncall-bridge/0.1"
#: What we keep of a platform's answer: enough to read the error, not a whole HTML page.
MAX_BODY_CHARS = 2048
#: Read at most this much of a response; a larger body is cut and its connection dropped.
_READ_LIMIT = 65536
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


def _reason(exc: BaseException) -> str:
    """The innermost OS-level reason ("Connection refused"), never a URL."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror and not isinstance(current, requests.RequestException):
            return str(current.strerror)
        for nxt in (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return type(exc).__name__


class Transport:
    """Sends :class:`HttpRequest` values for one target over a pooled, verified session."""

    def __init__(self, *, timeout: float, ca_file: Optional[str] = None, pool_size: int = 8) -> None:
        self.timeout = timeout
        self.session = requests.Session()
        # requests re-reads every environment variable (proxies, CA bundle) on each call,
        # which costs more CPU than the request itself; read them once here instead.
        self.session.trust_env = False
        # TLS verification is always on; a private CA is added, never verification removed.
        self.verify: Union[str, bool] = ca_file or _env_ca_bundle() or True
        self.session.verify = self.verify
        self.session.headers["User-Agent"] = USER_AGENT
        self._proxies: Dict[str, Dict[str, str]] = {}
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def send(self, request: HttpRequest, timeout: Optional[float] = None) -> Response:
        """One attempt. Returns the answer on success, raises Retryable/PermanentError otherwise."""
        limit = self.timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            with self.session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                timeout=limit,
                allow_redirects=False,
                stream=True,
                verify=self.verify,
                proxies=self._proxies_for(request.url),
            ) as resp:
                raw = _read_limited(resp)
                status = resp.status_code
                headers = resp.headers
        except requests.exceptions.SSLError as exc:
            text = str(exc)
            what = "certificate verification failed" if "CERTIFICATE_VERIFY_FAILED" in text else "TLS handshake failed"
            raise RetryableError(f"TLS error: {what} (set ca_file for a private CA)") from None
        except requests.exceptions.ConnectTimeout:
            raise RetryableError(f"connect timeout after {limit:g}s") from None
        except requests.exceptions.Timeout:
            raise RetryableError(f"timeout after {limit:g}s") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
            raise PermanentError("invalid target url") from None
        except requests.exceptions.ConnectionError as exc:
            raise RetryableError(f"connection failed: {_reason(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise RetryableError(f"request failed: {type(exc).__name__}") from None
        body = raw.decode("utf-8", "replace")
        check_status(status, body, headers, request.ok)
        return Response(status=status, body=body[:MAX_BODY_CHARS], elapsed=time.monotonic() - started)

    def _proxies_for(self, url: str) -> Dict[str, str]:
        """HTTP(S)_PROXY / NO_PROXY as requests would apply them, cached per scheme and host."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        proxies = self._proxies.get(origin)
        if proxies is None:
            proxies = self._proxies[origin] = dict(requests.utils.get_environ_proxies(origin))
        return proxies

    def close(self) -> None:
        self.session.close()


def _env_ca_bundle() -> Optional[str]:
    """The CA bundle requests itself would take from the environment."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def _read_limited(resp: requests.Response) -> bytes:
    chunks = []
    size = 0
    for chunk in resp.iter_content(8192):
        chunks.append(chunk)
        size += len(chunk)
        if size > _READ_LIMIT:
            break
    return b"".join(chunks)
