"""A real local SMTP server (aiosmtpd) that parses every message and checks its headers.

Modes mirror the ``email`` target's ``tls`` key: ``none``, ``starttls`` (STARTTLS
required before MAIL) and ``ssl`` (implicit TLS). With ``username``/``password``
set, AUTH is required. Invalid messages are refused at DATA with ``554`` and
recorded in ``rejected``. ``incidents`` is keyed by the ``X-Kapacitor-Id`` header;
``oncall_groups`` replays Grafana OnCall's inbound-email rules (group on the
upper-cased subject, resolve when the text body is ``OK``).
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage as ParsedMessage
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

__all__ = ["ReceivedMail", "SmtpReceiver", "make_certificate", "validate_email"]

_MSG_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: Tuple[str, ...]
    message: ParsedMessage
    raw: bytes

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        return body.get_content() if body is not None else ""


def make_certificate(directory: Path) -> Tuple[Path, Path]:
    """A throw-away self-signed certificate for ``localhost`` / ``127.0.0.1`` (openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def validate_email(message: ParsedMessage, raw: bytes, mail_from: str = "", rcpt_tos: Tuple[str, ...] = ()) -> List[str]:
    """What a strict MTA or mail client would object to (RFC 5322 and our threading)."""
    problems = []
    for line in raw.split(b"\r\n"):
        if len(line) > 998:
            problems.append("a line is longer than 998 octets (RFC 5322 2.1.1)")
            break
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        if message.get(name) is None:
            problems.append(f"{name} header missing")
        elif len(message.get_all(name, [])) > 1:
            problems.append(f"{name} header appears more than once")
    sender = parseaddr(str(message.get("From", "")))[1]
    if mail_from and sender.lower() != mail_from.lower():
        problems.append(f"From {sender!r} differs from MAIL FROM {mail_from!r}")
    to = {addr.lower() for _, addr in getaddresses([str(v) for v in message.get_all("To", [])])}
    for rcpt in rcpt_tos:
        if rcpt.lower() not in to:
            problems.append(f"RCPT {rcpt} is not in To")
    if message.get("Subject") is not None and not str(message["Subject"]).strip():
        problems.append("Subject is empty")
    for name in ("Message-ID", "In-Reply-To"):
        value = message.get(name)
        if value is not None and not _MSG_ID.match(str(value).strip()):
            problems.append(f"{name} {str(value)!r} is not <left@right>")
    refs = message.get("References")
    if refs is not None and not all(_MSG_ID.match(r) for r in str(refs).split()):
        problems.append("References must be a list of <id@domain>")
    if message.get("In-Reply-To") is not None and refs is None:
        problems.append("In-Reply-To without References breaks threading in some clients")
    if message.get("Date") is not None:
        try:
            parsedate_to_datetime(str(message["Date"]))
        except (TypeError, ValueError):
            problems.append("Date is not an RFC 5322 date")
    if message.get_content_type() != "text/plain":
        problems.append(f"Content-Type is {message.get_content_type()}, expected text/plain")
    elif message.get_content_charset() is None:
        problems.append("text/plain without a charset")
    else:
        try:
            message.get_content()
        except (LookupError, UnicodeDecodeError) as exc:
            problems.append(f"body does not decode: {exc}")
    return problems


class _Handler:
    def __init__(self, receiver: "SmtpReceiver") -> None:
        self.receiver = receiver

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.receiver._data(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content or envelope.content)


class SmtpReceiver:
    """Same surface as the HTTP receivers: ``start stop url requests rejected incidents fail_next``."""

    type_name = "email"

    def __init__(
        self,
        tls: str = "none",
        certificate: Optional[Tuple[Path, Path]] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        sender: str = "kapacitor@example.net",
        recipients: Tuple[str, ...] = ("oncall@example.net",),
    ) -> None:
        if tls != "none" and certificate is None:
            raise ValueError("starttls/ssl need a certificate (see make_certificate)")
        self.tls = tls
        self.certificate = certificate
        self.username = username
        self.password = password
        self.sender = sender
        self.recipients = recipients
        self.requests: List[ReceivedMail] = []
        self.rejected: List[Tuple[str, bytes]] = []
        self.failed: List[Tuple[int, bytes]] = []
        self.logins: List[str] = []
        self._incidents: Dict[str, str] = {}
        self.oncall_groups: Dict[str, str] = {}
        self._failures: Deque[int] = deque()
        self._lock = threading.Lock()
        self._controller: Optional[Controller] = None
        self.port = 0

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def client_context(self) -> ssl.SSLContext:
        """What the sender needs to trust this server's certificate."""
        assert self.certificate is not None
        return ssl.create_default_context(cafile=str(self.certificate[0]))

    def target_table(self) -> Dict[str, Any]:
        table: Dict[str, Any] = {
            "type": self.type_name,
            "smtp_host": self.host,
            "smtp_port": self.port,
            "from": self.sender,
            "to": list(self.recipients),
            "tls": self.tls,
        }
        if self.username is not None:
            table.update(username=self.username, password=self.password)
        return table

    def start(self) -> "SmtpReceiver":
        with socket.socket() as probe:
            probe.bind((self.host, 0))
            self.port = probe.getsockname()[1]
        kwargs: Dict[str, Any] = {}
        context = None
        if self.certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.certificate[0]), str(self.certificate[1]))
        if self.tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        if self.username is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        if self.tls == "none":
            kwargs.update(auth_require_tls=False)
        controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            ssl_context=context if self.tls == "ssl" else None,
            server_hostname="localhost",
            **kwargs,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> "SmtpReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def incidents(self) -> Dict[str, str]:
        with self._lock:
            return dict(self._incidents)

    def fail_next(self, status: int, n: int = 1, retry_after: Optional[float] = None) -> None:
        """Answer DATA of the next ``n`` messages with SMTP ``status`` (e.g. 451, 550)."""
        with self._lock:
            self._failures.extend([status] * n)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        if ok:
            self.logins.append(self.username or "")
        return AuthResult(success=ok, handled=False)

    def _data(self, mail_from: str, rcpt_tos: Tuple[str, ...], raw: bytes) -> str:
        with self._lock:
            if self._failures:
                code = self._failures.popleft()
                self.failed.append((code, raw))
                return f"{code} {'4.3.0' if code < 500 else '5.3.0'} scripted failure"
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, ParsedMessage)
            problems = validate_email(message, raw, mail_from, rcpt_tos)
            if problems:
                self.rejected.append(("; ".join(problems), raw))
                return f"554 5.6.0 {problems[0]}"
            mail = ReceivedMail(mail_from, rcpt_tos, message, raw)
            self.requests.append(mail)
            self._track(mail)
            return "250 2.0.0 OK"

    def _track(self, mail: ReceivedMail) -> None:
        ident = mail.message.get("X-Kapacitor-Id")
        level = mail.message.get("X-Kapacitor-Level")
        if ident is not None:
            key = str(ident)
            if str(level) == "OK":
                if key in self._incidents:
                    self._incidents[key] = "resolved"
            else:
                self._incidents[key] = "open"
        group = str(mail.message.get("Subject", "")).strip().upper()
        if mail.text.strip().upper() == "OK":
            if group in self.oncall_groups:
                self.oncall_groups[group] = "resolved"
        else:
            self.oncall_groups[group] = "open"
