"""The delivery engine's HTTP (aiohttp in the delivery loop) keeps the transport contract:
classification, Retry-After, a total deadline per attempt, TLS verification, proxies, at
most 64 KB read, redirects not followed, and no URL in any error."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import pytest

from bridge.aio_transport import AsyncTransport
from bridge.errors import PermanentError, RetryableError
from bridge.targets.base import HttpRequest
from bridge.transport import MAX_BODY_CHARS, READ_LIMIT, Response

from .harness import RawServer, Receiver, Reply, self_signed_certificate
from .test_transport import SECRET_PATH, Trickler

Outcome = Union[Response, BaseException]


def post(url: str) -> HttpRequest:
    return HttpRequest("POST", url, {"Content-Type": "application/json"}, b'{"id":"a"}')


def attempts(urls: List[str], *, timeout: float = 1.0, ca_file: Optional[str] = None) -> List[Outcome]:
    """Send to each url in turn from one transport in a fresh loop; answers or errors."""

    async def run() -> List[Outcome]:
        transport = AsyncTransport(timeout=timeout, ca_file=ca_file)
        out: List[Outcome] = []
        try:
            for url in urls:
                try:
                    out.append(await transport.send(post(url)))
                except BaseException as exc:  # noqa: BLE001 - handed to the test
                    out.append(exc)
        finally:
            await transport.close()
            await asyncio.sleep(0.3)  # as the engine does: TLS connections finish closing
        return out

    return asyncio.run(run())


def one(url: str, **kwargs: object) -> Outcome:
    return attempts([url], **kwargs)[0]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


class TestAnswers:
    def test_delivered_with_our_agent(self, receiver: Receiver) -> None:
        """A 2xx comes back as a Response; the request carries our User-Agent and body."""
        receiver.script(Reply(202, "Ok."))
        got = one(receiver.url + "/in")
        assert isinstance(got, Response) and got.status == 202 and got.body == "Ok."
        (req,) = receiver.requests
        assert (req.header("User-Agent") or "").startswith("kapacitor-oncall-bridge/")
        assert req.body == b'{"id":"a"}' and req.header("Content-Type") == "application/json"

    def test_connection_reused(self, receiver: Receiver) -> None:
        """Keep-alive: many attempts, one connection."""
        got = attempts([receiver.url + "/in"] * 5)
        assert all(isinstance(g, Response) for g in got)
        assert len({r.client[1] for r in receiver.requests}) == 1

    def test_retry_after(self, receiver: Receiver) -> None:
        """429 with Retry-After: retryable, with the platform's hint and body."""
        receiver.script(Reply(429, "slow down", headers={"Retry-After": "7"}))
        got = one(receiver.url + SECRET_PATH)
        assert isinstance(got, RetryableError) and got.status == 429 and got.retry_after == 7.0
        assert got.body == "slow down"

    def test_permanent_keeps_2kb(self, receiver: Receiver) -> None:
        """A 4xx is permanent with its status and the first 2 KB of the body."""
        receiver.script(Reply(400, "x" * 5000))
        got = one(receiver.url + "/in")
        assert isinstance(got, PermanentError) and got.status == 400 and len(got.body) == MAX_BODY_CHARS

    def test_redirect_not_followed(self, receiver: Receiver) -> None:
        """A redirect would turn the POST into a GET: refuse instead."""
        receiver.script(Reply(301, headers={"Location": "/elsewhere"}))
        got = one(receiver.url + "/in")
        assert isinstance(got, PermanentError) and "redirect" in str(got)
        assert len(receiver.requests) == 1

    def test_refused_without_url(self) -> None:
        """A dead platform is retryable, and the error names neither the URL nor the address."""
        down = Receiver()
        url = down.url + SECRET_PATH
        down.stop()
        got = one(url)
        assert isinstance(got, RetryableError), got
        assert str(got) == "connection failed: Connection refused"

    def test_invalid_url_is_permanent(self) -> None:
        got = one("http://[::1/x")
        assert isinstance(got, PermanentError) and str(got) == "invalid target url"


class Flood:
    """A platform answering 200 with an endless body (no length, close-delimited), as fast as
    it can; records whether the client hung up."""

    def __init__(self) -> None:
        self.hung_up = threading.Event()
        self.sent = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/in"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._sock.accept()
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            chunk = b"x" * 16384
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                conn.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            self.hung_up.set()
        finally:
            conn.close()

    def stop(self) -> None:
        self._sock.close()


class TestLimits:
    def test_body_read_is_cut_at_64kb(self) -> None:
        """An endless answer: at most 64 KB is read, the attempt ends at once (not at the
        deadline) and the connection is dropped."""
        server = Flood()
        try:
            started = time.monotonic()
            got = one(server.url, timeout=10.0)
            assert time.monotonic() - started < 5.0
            assert isinstance(got, Response) and got.status == 200 and got.body == "x" * MAX_BODY_CHARS
            assert server.hung_up.wait(10), "the bridge kept reading or kept the connection"
        finally:
            server.stop()
        assert READ_LIMIT == 65536

    @pytest.mark.parametrize(
        "head",
        [
            pytest.param(b"HTTP/1.1 202 Accepted\r\nX-Slow: ", id="headers"),
            pytest.param(b"HTTP/1.1 202 Accepted\r\nContent-Length: 100000\r\n\r\n", id="body-with-length"),
            pytest.param(b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\n", id="body-until-close"),
        ],
    )
    def test_trickle_hits_the_total_deadline(self, head: bytes) -> None:
        """A byte every 0.1 s under a 1 s limit: a retryable timeout at ~1 s, and a hang-up."""
        server = Trickler(head)
        try:
            started = time.monotonic()
            got = one(server.url + SECRET_PATH[1:], timeout=1.0)
            assert time.monotonic() - started < 3.0
            assert isinstance(got, RetryableError) and str(got) == "timeout: no complete answer within 1s", got
            assert server.hung_up(), "the bridge kept the trickling connection open"
        finally:
            server.stop()

    def test_tls_trickle_is_cut(self, certificate: Tuple[Path, Path]) -> None:
        server = Trickler(b"HTTP/1.1 202 Accepted\r\nX-Slow: ", tls=certificate)
        try:
            got = one(server.url, timeout=1.0, ca_file=str(certificate[0]))
            assert isinstance(got, RetryableError) and "no complete answer within 1s" in str(got), got
        finally:
            server.stop()

    def test_next_attempt_after_a_cut_is_clean(self, receiver: Receiver) -> None:
        """A deadline that fired for one attempt does not touch later ones on the same session."""
        server = Trickler(b"HTTP/1.1 202 Accepted\r\nX-Slow: ")
        try:
            got = attempts([server.url] + [receiver.url + "/in"] * 3, timeout=0.5)
        finally:
            server.stop()
        assert isinstance(got[0], RetryableError)
        assert [g.status for g in got[1:] if isinstance(g, Response)] == [202, 202, 202]


class TestTls:
    def test_untrusted_certificate_refused(self, certificate: Tuple[Path, Path]) -> None:
        """Verification is on: a self-signed platform certificate fails, named, retryably."""
        server = Receiver(tls=certificate)
        try:
            got = one(server.url + SECRET_PATH, timeout=2.0)
            assert isinstance(got, RetryableError)
            assert str(got) == "TLS error: certificate verification failed (set ca_file for a private CA)"
            assert server.requests == []
        finally:
            server.stop()

    def test_ca_file_trusts_private_ca(self, certificate: Tuple[Path, Path]) -> None:
        server = Receiver(tls=certificate)
        try:
            got = one(server.url + "/in", timeout=2.0, ca_file=str(certificate[0]))
            assert isinstance(got, Response) and got.status == 202
        finally:
            server.stop()

    def test_ca_bundle_from_environment(self, certificate: Tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
        """REQUESTS_CA_BUNDLE is honoured like requests does (no ca_file in the target)."""
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
        server = Receiver(tls=certificate)
        try:
            got = one(server.url + "/in", timeout=2.0)
            assert isinstance(got, Response) and got.status == 202
        finally:
            server.stop()


class Proxy(RawServer):
    """A minimal forward proxy on loopback: absolute-form requests for http (one per
    connection) and CONNECT tunnels for https. Records each request line."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def handle(self, conn: socket.socket) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, rest = data.split(b"\r\n\r\n", 1)
            line = head.split(b"\r\n", 1)[0].decode()
            self.lines.append(line)
            method, target, _version = line.split(" ")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._pipe(conn, upstream)
                return
            rest_url = target.split("://", 1)[1]
            hostport, path = rest_url.split("/", 1)
            host, port = hostport.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            lines = head.split(b"\r\n")
            lines[0] = f"{method} /{path} HTTP/1.1".encode()
            upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + rest)
            self._pipe(conn, upstream)
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 5)
                if not readable:
                    return
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        finally:
            b.close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    p = Proxy()
    yield p
    p.stop()


class TestProxy:
    def test_http_through_proxy(self, proxy: Proxy, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        got = one(receiver.url + "/in")
        assert isinstance(got, Response) and got.status == 202
        assert proxy.lines == [f"POST {receiver.url}/in HTTP/1.1"]
        assert receiver.requests[0].body == b'{"id":"a"}'

    def test_no_proxy_is_honoured(self, proxy: Proxy, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        got = one(receiver.url + "/in")
        assert isinstance(got, Response) and got.status == 202
        assert proxy.lines == []

    def test_https_through_connect(
        self, proxy: Proxy, certificate: Tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """https goes through a CONNECT tunnel, verified end to end against the platform's certificate."""
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        server = Receiver(tls=certificate)
        try:
            got = one(server.url + "/in", timeout=3.0, ca_file=str(certificate[0]))
            assert isinstance(got, Response) and got.status == 202, got
            assert proxy.lines == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1"]
            assert len(server.requests) == 1
        finally:
            server.stop()


class TestConcurrency:
    def test_more_attempts_than_connections(self, receiver: Receiver) -> None:
        """Attempts beyond the connection limit wait for a connection, then all arrive: at
        most ``limit`` connections are opened, and each attempt gets its own answer."""

        async def run() -> List[Outcome]:
            transport = AsyncTransport(timeout=5.0, limit=4)
            try:
                return list(await asyncio.gather(
                    *(transport.send(HttpRequest("POST", f"{receiver.url}/in/{i}", {}, b'{"n":%d}' % i))
                      for i in range(40)), return_exceptions=True))
            finally:
                await transport.close()

        got = asyncio.run(run())
        assert all(isinstance(g, Response) and g.status == 202 for g in got), got
        assert sorted(r.body for r in receiver.requests) == sorted(b'{"n":%d}' % i for i in range(40))
        assert {r.path for r in receiver.requests} == {f"/in/{i}" for i in range(40)}
        assert len({r.client[1] for r in receiver.requests}) <= 4
        assert {r.header("Content-Type") for r in receiver.requests} == {"application/octet-stream"}, "not a form"

    def test_close_with_an_attempt_in_flight(self) -> None:
        """Closing while a platform has not answered ends that attempt as cancelled and
        drops its connection; nothing is left registered in the loop."""
        server = Trickler(b"HTTP/1.1 202 Accepted\r\nX-Slow: ")

        async def run() -> Tuple[bool, int]:
            transport = AsyncTransport(timeout=10.0)
            attempt = asyncio.ensure_future(transport.send(post(server.url)))
            await asyncio.sleep(0.5)
            await transport.close()
            try:
                await attempt
            except asyncio.CancelledError:
                cancelled = True
            else:
                cancelled = False
            loop = asyncio.get_running_loop()
            return cancelled, len(loop._selector.get_map())  # type: ignore[attr-defined]

        try:
            cancelled, watched = asyncio.run(run())
            assert cancelled
            assert watched == 1, "only the loop's own wake-up pipe is still watched"
            assert server.hung_up(5), "the connection outlived the transport"
        finally:
            server.stop()
