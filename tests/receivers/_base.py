"""A threaded loopback HTTP server that plays one on-call platform in tests.

Each platform subclass supplies a *pure* inspection of a request (``inspect``) and
the platform's answers; this base does the HTTP plumbing, the scripted failures
and the bookkeeping tests assert on. Validation never needs a running server:
``problems(Incoming.from_request(target.render(event)))`` checks a rendered request
directly, which is how the property tests fuzz the formatters.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, ClassVar, Deque, Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from bridge.targets.base import HttpRequest

__all__ = [
    "Answer",
    "Incoming",
    "Receiver",
    "check_string_map",
    "check_strings",
    "check_unknown",
    "decode",
    "is_rfc3339",
    "json_answer",
    "new_token",
    "parse_rfc3339",
    "text_answer",
]


@dataclass(frozen=True)
class Incoming:
    """One request as the platform sees it; header names are lower-cased and ``path``
    stays percent-encoded (an encoded ``/`` inside a segment must not split it)."""

    method: str
    path: str
    query: Mapping[str, List[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def from_request(cls, request: HttpRequest) -> "Incoming":
        """What a rendered request looks like on arrival (host part dropped)."""
        parts = urlsplit(request.url)
        return cls(
            method=request.method.upper(),
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.body,
        )

    @property
    def segments(self) -> List[str]:
        """Path segments, each percent-decoded."""
        return [unquote(s) for s in self.path.split("/")]

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def json_answer(status: int, obj: Any, headers: Optional[Mapping[str, str]] = None) -> Answer:
    return Answer(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


def text_answer(status: int, text: str) -> Answer:
    return Answer(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})


def new_token(n: int = 24) -> str:
    return uuid.uuid4().hex[:n]


def parse_rfc3339(value: Any) -> Optional[datetime]:
    """``YYYY-MM-DDTHH:MM:SS[.frac](Z|±hh:mm)`` as Go's time.RFC3339 parser reads it, or None."""
    if not isinstance(value, str) or len(value) < 20 or value[10:11] not in ("T", "t"):
        return None
    text = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        if digits == 0 or digits > 9:
            return None
        text = head + "." + rest[:digits][:6].ljust(6, "0") + rest[digits:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def is_rfc3339(value: Any) -> bool:
    return parse_rfc3339(value) is not None


def _decode_json(req: Incoming) -> Tuple[Any, List[str]]:
    """Parse the body as strict JSON (no NaN), or say why not."""
    try:
        text = req.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [f"body is not UTF-8 ({exc.reason} at byte {exc.start})"]

    def reject(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=reject), []
    except ValueError as exc:
        return None, [f"body is not valid JSON: {exc}"]


class Receiver:
    """Common API: ``start() stop() url requests rejected incidents fail_next()``.

    Subclasses implement :meth:`inspect` (pure) and :meth:`accept` (updates state,
    returns the platform's success answer) and may override :meth:`refuse`.
    """

    type_name: ClassVar[str]
    #: Success status and body when the subclass does not say otherwise.
    ok: ClassVar[Answer] = Answer(200)

    def __init__(self) -> None:
        self.requests: List[Incoming] = []
        self.rejected: List[Tuple[str, bytes]] = []
        self.failed: List[Tuple[int, Incoming]] = []
        self._incidents: Dict[str, str] = {}
        self._failures: Deque[Tuple[int, Optional[float]]] = deque()
        self._stalls: Deque[float] = deque()
        self._lock = threading.RLock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            #: Idle keep-alive connections are dropped, so no handler thread outlives a test long.
            timeout = 30

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = Incoming(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                answer = receiver._dispatch(req)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- what tests use ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL to put in the target's ``url`` key."""
        return self.base_url

    def target_table(self) -> Dict[str, Any]:
        """A ``[[target]]`` table (without ``name``) that points at this receiver."""
        return {"type": self.type_name, "url": self.url}

    @property
    def incidents(self) -> Dict[str, str]:
        """Correlation key -> ``"open"`` or ``"resolved"``."""
        with self._lock:
            return dict(self._incidents)

    def fail_next(self, status: int, n: int = 1, retry_after: Optional[float] = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and ``Retry-After`` if given)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * n)

    def stall_next(self, seconds: float, n: int = 1) -> None:
        """Hold the next ``n`` requests for ``seconds`` before answering (client timeouts)."""
        with self._lock:
            self._stalls.extend([seconds] * n)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def problems(self, req: Incoming) -> List[str]:
        """Everything the platform would object to in ``req`` (empty: accepted)."""
        return self.inspect(req)[1]

    # -- subclass API -----------------------------------------------------------------

    def inspect(self, req: Incoming) -> Tuple[int, List[str]]:
        """``(status to answer if invalid, problems)``; pure, no state changes."""
        raise NotImplementedError

    def accept(self, req: Incoming) -> Answer:
        """Record a valid request's effect; return the platform's success answer."""
        return self.ok

    def refuse(self, status: int, problems: List[str]) -> Answer:
        return json_answer(status, {"errors": problems})

    def scripted(self, status: int, retry_after: Optional[float]) -> Answer:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        return json_answer(status, {"message": f"scripted failure {status}"}, headers)

    # -- plumbing -----------------------------------------------------------------------

    def _dispatch(self, req: Incoming) -> Answer:
        with self._lock:
            stall = self._stalls.popleft() if self._stalls else 0.0
        if stall:
            time.sleep(stall)
        with self._lock:
            if self._failures:
                status, retry_after = self._failures.popleft()
                self.failed.append((status, req))
                return self.scripted(status, retry_after)
            status, problems = self.inspect(req)
            if problems:
                self.rejected.append(("; ".join(problems), req.body))
                return self.refuse(status, problems)
            self.requests.append(req)
            return self.accept(req)

    def _open(self, key: str) -> None:
        self._incidents[key] = "open"

    def _resolve(self, key: str) -> None:
        """Platforms drop a resolve for an unknown key; we remember it as resolved."""
        self._incidents[key] = "resolved"


def check_strings(obj: Mapping[str, Any], where: str, keys: Any) -> List[str]:
    """Problems for every present key of ``keys`` whose value is not a string."""
    return [f"{where}{k} must be a string" for k in keys if k in obj and not isinstance(obj[k], str)]


def check_string_map(value: Any, where: str) -> List[str]:
    if not isinstance(value, dict):
        return [f"{where} must be an object"]
    return [f"{where}.{k} must be a string" for k, v in value.items() if not isinstance(v, str)]


def check_unknown(obj: Mapping[str, Any], where: str, known: Any) -> List[str]:
    """The platform would silently ignore these; a strict receiver catches the typo."""
    return [f"{where}{k} is not a field of this API" for k in obj if k not in known]


def decode(req: Incoming) -> Tuple[Any, List[str]]:
    return _decode_json(req)
