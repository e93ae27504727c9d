"""HTTP transport: status classification, Retry-After, TLS verification, no URL in errors."""

from __future__ import annotations

import email.utils
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from bridge.errors import PermanentError, RetryableError
from bridge.targets.base import HttpRequest
from bridge.transport import MAX_BODY_CHARS, Transport, check_status, parse_retry_after

from .harness import RawServer, Receiver, Reply, self_signed_certificate

SECRET_PATH = "/integrations/v1/kapacitor/PathTok3nPathTok3n/"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class TestRetryAfter:
    @pytest.mark.parametrize(
        "value,seconds",
        [("1", 1.0), (" 30 ", 30.0), ("2.5", 2.5), ("0", 0.0), ("999999999", 86400.0), (None, None), ("", None),
         ("soon", None)],
    )
    def test_delta_seconds(self, value: object, seconds: object) -> None:
        """Delta-seconds are taken as given (capped at a day); junk is ignored."""
        assert parse_retry_after(value, NOW) == seconds  # type: ignore[arg-type]

    def test_http_date(self) -> None:
        """An HTTP date is turned into seconds from now; a past date means now."""
        assert parse_retry_after(email.utils.formatdate(NOW + 120, usegmt=True), NOW) == 120.0
        assert parse_retry_after(email.utils.formatdate(NOW - 120, usegmt=True), NOW) == 0.0


class TestCheckStatus:
    @pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
    def test_success(self, status: int) -> None:
        """Any 2xx is delivered when the target lists no specific statuses."""
        check_status(status, "", {})

    def test_specific_success(self) -> None:
        """A target that expects 202 treats another 2xx as a permanent surprise."""
        check_status(202, "", {}, ok=(202,))
        with pytest.raises(PermanentError, match="unexpected success status"):
            check_status(200, "", {}, ok=(202,))

    @pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
    def test_retryable(self, status: int) -> None:
        """Timeouts, rate limits and server errors are retried, with the platform's hint."""
        with pytest.raises(RetryableError) as info:
            check_status(status, "busy", {"Retry-After": "7"}, now=NOW)
        assert info.value.status == status and info.value.retry_after == 7.0 and info.value.body == "busy"

    @pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 413, 422])
    def test_permanent(self, status: int) -> None:
        """Every other answer dead-letters, keeping status and at most 2 KB of body."""
        with pytest.raises(PermanentError) as info:
            check_status(status, "x" * 5000, {})
        assert info.value.status == status and len(info.value.body) == MAX_BODY_CHARS


@pytest.fixture
def transport() -> Iterator[Transport]:
    t = Transport(timeout=1.0)
    yield t
    t.close()


def post(url: str) -> HttpRequest:
    return HttpRequest("POST", url, {"Content-Type": "application/json"}, b'{"id":"a"}')


class TestTransport:
    def test_delivered(self, transport: Transport, receiver: Receiver) -> None:
        """A 2xx comes back as a Response with status and body; the request carries our agent."""
        receiver.script(Reply(202, "Ok."))
        response = transport.send(post(receiver.url + "/in"))
        assert response.status == 202 and response.body == "Ok."
        assert (receiver.requests[0].header("User-Agent") or "").startswith("kapacitor-oncall-bridge/")

    def test_connection_reused(self, transport: Transport, receiver: Receiver) -> None:
        """Keep-alive: many requests, one connection."""
        for _ in range(5):
            transport.send(post(receiver.url + "/in"))
        ports = {r.client[1] for r in receiver.requests}
        assert len(transport.pool.pools) == 1 and len(ports) == 1

    def test_refused_without_url(self, transport: Transport) -> None:
        """A dead platform is retryable and the error never quotes the (token-bearing) URL."""
        down = Receiver()
        url = down.url + SECRET_PATH
        down.stop()
        with pytest.raises(RetryableError) as info:
            transport.send(post(url))
        assert "connection failed" in str(info.value) and "PathTok3n" not in str(info.value)

    def test_timeout(self, transport: Transport, receiver: Receiver) -> None:
        """A hanging platform is a retryable timeout."""
        receiver.script(Reply(202, delay=2.0))
        with pytest.raises(RetryableError, match="timeout"):
            transport.send(post(receiver.url + SECRET_PATH), timeout=0.3)

    def test_redirect_not_followed(self, transport: Transport, receiver: Receiver) -> None:
        """A redirect would turn the POST into a GET: refuse instead."""
        receiver.script(Reply(301, headers={"Location": "/elsewhere"}))
        with pytest.raises(PermanentError, match="redirect"):
            transport.send(post(receiver.url + "/in"))
        assert len(receiver.requests) == 1


class Trickler(RawServer):
    """A platform that answers one byte at a time, forever: each byte well inside the
    per-read timeout, the whole answer never. Records when each client hung up."""

    def __init__(self, head: bytes, interval: float = 0.1, tls: Optional[Tuple[Path, Path]] = None) -> None:
        self.head = head
        self.interval = interval
        self.closed: List[float] = []
        self._tls = None
        if tls is not None:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(str(tls[0]), str(tls[1]))
        super().__init__()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/in"

    def handle(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            conn.recv(65536)
            data = self.head
            i = 0
            while not self._stop.is_set():
                conn.sendall(data[i : i + 1] if i < len(data) else b"x")
                i += 1
                time.sleep(self.interval)
        except OSError:
            self.closed.append(time.monotonic())
        finally:
            conn.close()

    def hung_up(self, within: float = 10.0) -> bool:
        """Whether a client hung up, waiting up to ``within`` seconds for it."""
        deadline = time.monotonic() + within
        while not self.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(self.closed)


def send_in_thread(transport: Transport, url: str, timeout: float) -> Tuple[Optional[BaseException], float]:
    """Run one attempt on a worker-like thread; a hung attempt shows as a thread still alive."""
    outcome: List[BaseException] = []
    started = time.monotonic()

    def run() -> None:
        try:
            transport.send(post(url), timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the attempt is still running: the deadline did not hold"
    return (outcome[0] if outcome else None), time.monotonic() - started


class TestTotalDeadline:
    """The per-attempt timeout bounds the whole exchange, not each read (a trickle is not progress)."""

    @pytest.mark.parametrize(
        "head",
        [
            pytest.param(b"HTTP/1.1 202 Accepted\r\nX-Slow: ", id="headers"),
            pytest.param(b"HTTP/1.1 202 Accepted\r\nContent-Length: 100000\r\n\r\n", id="body-with-length"),
            pytest.param(b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\n", id="body-until-close"),
        ],
    )
    def test_trickle_is_cut_at_the_deadline(self, head: bytes) -> None:
        """Bytes every 0.1 s under a 1 s limit: the attempt ends as a retryable timeout and hangs up."""
        server = Trickler(head)
        transport = Transport(timeout=1.0)
        try:
            error, _ = send_in_thread(transport, server.url, 1.0)
            assert isinstance(error, RetryableError), error
            assert "no complete answer within 1s" in str(error)
            assert server.hung_up(), "the bridge kept the trickling connection open"
        finally:
            transport.close()
            server.stop()

    def test_tls_trickle_is_cut(self, certificate: Tuple[Path, Path]) -> None:
        """The same over TLS (the socket under the TLS layer is shut down)."""
        server = Trickler(b"HTTP/1.1 202 Accepted\r\nX-Slow: ", tls=certificate)
        transport = Transport(timeout=1.0, ca_file=str(certificate[0]))
        try:
            error, _ = send_in_thread(transport, server.url, 1.0)
            assert isinstance(error, RetryableError) and "no complete answer within 1s" in str(error), error
        finally:
            transport.close()
            server.stop()

    def test_next_attempt_after_a_cut_is_clean(self, transport: Transport, receiver: Receiver) -> None:
        """A deadline that passed for one attempt does not touch later attempts on the same pool."""
        server = Trickler(b"HTTP/1.1 202 Accepted\r\nX-Slow: ")
        try:
            error, _ = send_in_thread(transport, server.url, 0.5)
            assert isinstance(error, RetryableError)
        finally:
            server.stop()
        for _ in range(3):
            assert transport.send(post(receiver.url + "/in"), timeout=0.5).status == 202
        time.sleep(0.6)  # past any deadline armed above: the reused connection must survive it
        assert transport.send(post(receiver.url + "/in"), timeout=0.5).status == 202


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made once per module."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


class TestTls:
    def test_untrusted_certificate_refused(self, certificate: Tuple[Path, Path]) -> None:
        """Verification is on: a self-signed platform certificate fails (retryably, so a fix drains the queue)."""
        server = Receiver(tls=certificate)
        transport = Transport(timeout=2.0)
        try:
            with pytest.raises(RetryableError, match="certificate verification failed"):
                transport.send(post(server.url + "/in"))
            assert server.requests == []
        finally:
            transport.close()
            server.stop()

    def test_ca_file_trusts_private_ca(self, certificate: Tuple[Path, Path]) -> None:
        """ca_file adds a private CA; verification stays on."""
        server = Receiver(tls=certificate)
        transport = Transport(timeout=2.0, ca_file=str(Path(certificate[0])))
        try:
            assert transport.send(post(server.url + "/in")).status == 202
        finally:
            transport.close()
            server.stop()
