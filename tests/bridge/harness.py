"""Reusable test pieces: a real loopback HTTP receiver and the bridge as a subprocess.

Used by the bridge core suite and meant for the platform and reliability suites:

* :class:`Receiver` - a threaded HTTP/1.1 server on 127.0.0.1 that records every
  request and answers from a script (``[500, 500, 202]``), a default, or a
  handler function (strict platform validators plug in there);
* :class:`BridgeProcess` - ``kapacitor-oncall-bridge serve`` in a subprocess on a
  free port with a temp config: start / stop (SIGTERM) / kill9 / restart,
  ``post_alert``, ``healthz``, ``metric``, ``cli`` and ``wait_until``;
* :func:`free_port` and :func:`kapacitor_event`.

Nothing here mocks the code under test: bytes go over loopback sockets.
"""

from __future__ import annotations

import json
import os
from collections import deque
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import requests

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - py < 3.11
    import tomli as tomllib

__all__ = [
    "BridgeProcess",
    "Receiver",
    "Recorded",
    "Reply",
    "bridge_command",
    "free_port",
    "kapacitor_event",
    "self_signed_certificate",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]


def self_signed_certificate(directory: Union[str, Path]) -> Tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 / localhost (openssl CLI): (cert.pem, key.pem)."""
    cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def kapacitor_event(
    id: str = "cpu:host=web-01",
    level: str = "CRITICAL",
    *,
    message: Optional[str] = None,
    details: str = "",
    time: Optional[str] = None,
    duration: int = 0,
    previous_level: str = "OK",
    recoverable: bool = True,
    tags: Optional[Mapping[str, str]] = None,
    value: float = 97.5,
    **extra: Any,
) -> Dict[str, Any]:
    """A Kapacitor ``alert.Data`` body as ``.post()`` sends it."""
    when = time or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    name = id.split(":", 1)[0]
    event = {
        "id": id,
        "message": message if message is not None else f"{id} is {level}",
        "details": details,
        "time": when,
        "duration": duration,
        "level": level,
        "data": {
            "series": [
                {
                    "name": name,
                    "tags": dict(tags or {"host": "web-01"}),
                    "columns": ["time", "value"],
                    "values": [[when, value]],
                }
            ]
        },
        "previousLevel": previous_level,
        "recoverable": recoverable,
    }
    event.update(extra)
    return event


# -- receiver ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A scripted answer. ``delay`` sleeps before answering (timeouts)."""

    status: int = 200
    body: Union[bytes, str] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Recorded:
    """One request as the receiver saw it; ``at`` is ``time.monotonic()`` on arrival."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    at: float
    status: int = 0
    #: The client's (host, port): one port for many requests means the connection was reused.
    client: Tuple[str, int] = ("", 0)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


ReplySpec = Union[int, Reply]
Handler = Callable[[Recorded], ReplySpec]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "Receiver"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout test) is normal here; stay quiet."""


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: tests read ``Receiver.requests`` instead."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            # The client died mid-request (kill -9): a real server never sees this as a request.
            self.close_connection = True
            return
        client = (str(self.client_address[0]), int(self.client_address[1]))
        rec = Recorded(self.command, self.path, dict(self.headers.items()), body, time.monotonic(), 0, client)
        reply = self.server.owner._reply_for(rec)
        if reply.delay:
            time.sleep(reply.delay)
        payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
        # Recorded before answering, so a synchronous client always finds its request here;
        # the bridge may not have committed the outcome yet when a waiter wakes up.
        self.server.owner._record(
            Recorded(rec.method, rec.path, rec.headers, rec.body, rec.at, reply.status, rec.client)
        )
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _handle


class Receiver:
    """A loopback HTTP receiver that records requests and answers as scripted.

    Answers, in order of precedence: ``handler(recorded)`` if given; the next
    scripted reply; the default. A reply is an ``int`` status or a :class:`Reply`.
    """

    def __init__(
        self,
        script: Sequence[ReplySpec] = (),
        *,
        default: ReplySpec = 202,
        handler: Optional[Handler] = None,
        port: int = 0,
        tls: Optional[Tuple[Union[str, Path], Union[str, Path]]] = None,
    ) -> None:
        self._lock = threading.Condition()
        #: (certificate, key) PEM files: serve HTTPS instead of HTTP.
        self.tls = tls
        self._script: Deque[ReplySpec] = deque(script)
        self.default = default
        self.handler = handler
        self._requests: List[Recorded] = []
        self._connections: Set[socket.socket] = set()
        self._port = port
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.start()

    # lifecycle
    def start(self) -> "Receiver":
        server = _Server(("127.0.0.1", self._port), _RequestHandler)
        server.owner = self
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (the platform is down)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = None

    down = stop

    def up(self) -> "Receiver":
        """Listen again on the same port."""
        return self.start() if self._server is None else self

    close = stop

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, no trailing slash: ``http://127.0.0.1:PORT`` (``https`` with ``tls``)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}"

    # scripting
    def script(self, *replies: ReplySpec) -> None:
        """Queue answers for the next requests (then the default applies)."""
        with self._lock:
            self._script.extend(replies)

    def set_default(self, reply: ReplySpec) -> None:
        with self._lock:
            self.default = reply

    def _reply_for(self, rec: Recorded) -> Reply:
        with self._lock:
            if self.handler is not None:
                spec: ReplySpec = self.handler(rec)
            elif self._script:
                spec = self._script.popleft()
            else:
                spec = self.default
        return spec if isinstance(spec, Reply) else Reply(status=spec)

    # recording
    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self._requests.append(rec)
            self._lock.notify_all()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    @property
    def requests(self) -> List[Recorded]:
        with self._lock:
            return list(self._requests)

    def accepted(self) -> List[Recorded]:
        """Requests answered with 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def json_bodies(self, only_accepted: bool = False) -> List[Any]:
        return [r.json() for r in (self.accepted() if only_accepted else self.requests)]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for(self, count: int, timeout: float = 10.0, only_accepted: bool = False) -> List[Recorded]:
        """Block until at least ``count`` requests arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self._requests if not only_accepted or 200 <= r.status < 300]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver got {len(got)} of {count} requests in {timeout}s")
                self._lock.wait(left)


# -- the bridge as a subprocess -------------------------------------------------------


class RawServer:
    """A raw TCP server on loopback for platforms that misbehave below HTTP (trickling bytes,
    tunnelling a proxy): a thread per connection runs :meth:`handle`; ``stop()`` ends it."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def bridge_command() -> List[str]:
    """The installed console script next to this interpreter, else ``python -m bridge``."""
    script = Path(sys.executable).parent / "kapacitor-oncall-bridge"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "bridge"]


def _insert_after_header(text: str, header: str, line: str) -> str:
    lines = text.splitlines()
    for i, current in enumerate(lines):
        if current.strip() == header:
            lines.insert(i + 1, line)
            return "\n".join(lines) + "\n"
    return f"{header}\n{line}\n" + text


class BridgeProcess:
    """``kapacitor-oncall-bridge serve`` on a free loopback port with ``config_text``.

    ``[server] listen`` and ``[store] path`` are filled in when the text leaves
    them out (port from :func:`free_port`, store in ``workdir``). stderr of every
    run is kept in ``workdir/bridge-<n>.log``; :meth:`logs` parses the JSON lines.
    """

    def __init__(
        self,
        config_text: str = "",
        workdir: Optional[Union[str, Path]] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        args: Sequence[str] = (),
        port: Optional[int] = None,
        preexec_fn: Optional[Callable[[], None]] = None,
        start: bool = False,
    ) -> None:
        if workdir is None:
            import tempfile

            workdir = tempfile.mkdtemp(prefix="bridge-")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.args = list(args)
        self.preexec_fn = preexec_fn
        parsed = tomllib.loads(config_text)
        server = parsed.get("server", {})
        if "listen" in server:
            self.port = int(str(server["listen"]).rsplit(":", 1)[1])
        else:
            self.port = port or free_port()
            config_text = _insert_after_header(config_text, "[server]", f'listen = "127.0.0.1:{self.port}"')
        store = parsed.get("store", {})
        if "path" in store:
            self.db_path = Path(store["path"])
        else:
            self.db_path = self.workdir / "bridge.db"
            config_text = _insert_after_header(config_text, "[store]", f'path = "{self.db_path}"')
        self.config_text = config_text
        self.config_path = self.workdir / "bridge.toml"
        self.config_path.write_text(config_text)
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.runs = 0
        self.token: Optional[str] = None
        self._session = requests.Session()
        self._session.trust_env = False
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.pop("CI", None)
        env.update(self.env)
        env.update(extra or {})
        return env

    @property
    def log_path(self) -> Path:
        return self.workdir / f"bridge-{self.runs}.log"

    def start(self, wait: bool = True, timeout: float = 15.0) -> "BridgeProcess":
        """Start ``serve``; with ``wait``, return once /healthz answers 200."""
        if self.running:
            raise RuntimeError("bridge already running")
        self.runs += 1
        stderr = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [*bridge_command(), "serve", "--config", str(self.config_path), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.workdir,
                env=self._env(),
                preexec_fn=self.preexec_fn,
            )
        finally:
            stderr.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if self._session.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.03)
        raise RuntimeError(f"bridge not healthy within {timeout}s:\n{self.log_text()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"bridge did not stop within {timeout}s:\n{self.log_text()}") from None

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no flush, like a power cut for the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, wait: bool = True) -> "BridgeProcess":
        if self.running:
            self.stop()
        return self.start(wait=wait)

    def close(self) -> None:
        self.kill9()
        self._session.close()

    # HTTP helpers
    def post_alert(
        self,
        target: str,
        event: Union[Mapping[str, Any], bytes, str],
        *,
        token: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: float = 15.0,
    ) -> Tuple[int, Any]:
        """POST an event; returns (status, decoded JSON body or text)."""
        if isinstance(event, Mapping):
            data = json.dumps(event).encode()
        elif isinstance(event, str):
            data = event.encode()
        else:
            data = event
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        token = token if token is not None else self.token
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        resp = self._session.post(f"{self.url}/alerts/{target}", data=data, headers=hdrs, timeout=timeout)
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, resp.text

    def get(self, path: str, timeout: float = 10.0) -> requests.Response:
        return self._session.get(self.url + path, timeout=timeout)

    def healthz(self) -> Tuple[int, Any]:
        resp = self.get("/healthz")
        return resp.status_code, resp.json()

    def metrics_text(self) -> str:
        return self.get("/metrics").text

    def metric(self, name: str, labels: Optional[Mapping[str, str]] = None) -> Optional[float]:
        """One sample value from /metrics (``name`` as exposed, e.g. ``oncall_deliveries_total``)."""
        from prometheus_client.parser import text_string_to_metric_families

        want = dict(labels or {})
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in want.items()):
                    return float(sample.value)
        return None

    def cli(
        self, *args: str, env: Optional[Mapping[str, str]] = None, timeout: float = 30.0
    ) -> "subprocess.CompletedProcess[str]":
        """Run another subcommand against the same config (``queue``, ``replay``...)."""
        command, rest = args[0], list(args[1:])
        return subprocess.run(
            [*bridge_command(), command, "--config", str(self.config_path), *rest],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=self._env(env),
            timeout=timeout,
        )

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0, message: str = "") -> Any:
        """Like :func:`wait_until`, failing early (with the log) if the bridge died."""

        def check() -> Any:
            if self.proc is not None and self.proc.poll() is not None and self.proc.returncode not in (0,):
                raise AssertionError(f"bridge died ({self.proc.returncode}):\n{self.log_text()}")
            return predicate()

        return wait_until(check, timeout, message=message)

    # logs
    def log_text(self) -> str:
        """stderr of every run so far."""
        parts = []
        for n in range(1, self.runs + 1):
            path = self.workdir / f"bridge-{n}.log"
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def logs(self) -> List[Dict[str, Any]]:
        """JSON log lines of every run (non-JSON lines are skipped)."""
        out = []
        for line in self.log_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out

    def events(self, name: str) -> List[Dict[str, Any]]:
        """Log lines whose ``event`` is ``name``."""
        return [entry for entry in self.logs() if entry.get("event") == name]
