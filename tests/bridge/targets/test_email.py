"""E-mail formatter and SMTP sending, checked against a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
import socket
import threading

import pytest
from hypothesis import given

from bridge.errors import ConfigError, PermanentError, RetryableError
from bridge.smtp import build_message, send_email
from bridge.targets.base import EmailMessage
from tests.receivers import SmtpReceiver, make_certificate, validate_email
from tests.receivers.strategies import alert_events

from .helpers import FUZZ, build, event, recovery

BASE = {"smtp_host": "mail.example.net", "from": "kapacitor@example.net", "to": ["oncall@example.net"]}


def target(**extra):
    return build("email", {**BASE, **extra})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


def parsed(msg: EmailMessage, t=None):
    """The message as the receiving MTA parses it."""
    raw = build_message(msg, t or target()).as_bytes()
    return email.message_from_bytes(raw, policy=email.policy.default), raw


class TestRender:
    def test_subject_level_and_id(self):
        """The mailbox subject carries level and id."""
        assert target().render(event()).subject == "[CRITICAL] disk_used:host=db-7"
        assert target().render(recovery()).subject == "[OK] disk_used:host=db-7"

    def test_threading_per_id(self):
        """Every message of one id replies to the same thread root; Message-IDs differ per event."""
        t = target()
        trigger, resolve = t.render(event()), t.render(recovery())
        assert trigger.in_reply_to == resolve.in_reply_to == t.thread_id(event())
        assert trigger.headers["References"] == trigger.in_reply_to
        assert trigger.message_id != resolve.message_id
        assert trigger.message_id == t.render(event()).message_id
        assert trigger.message_id.endswith("@example.net>")
        assert t.render(event(ident="other")).in_reply_to != trigger.in_reply_to

    def test_body(self):
        """The body has the message, the facts and the details."""
        text = target().render(event()).body
        assert text.startswith("Disk almost full on db-7\n")
        assert "Tag:       host=db-7" in text
        assert "used_percent=97.4 (crit > 95)" in text

    def test_oncall_style(self):
        """OnCall style keeps one subject per id and sends ``OK`` as the recovery body."""
        t = target(style="oncall")
        trigger, resolve = t.render(event()), t.render(recovery())
        assert trigger.subject == resolve.subject
        assert trigger.subject.startswith("[kapacitor] disk_used:host=db-7 #")
        assert resolve.body == "OK"
        assert trigger.body.startswith("CRITICAL\n")
        assert t.render(event(ident="DISK_USED:HOST=DB-7")).subject.upper() != trigger.subject.upper()

    def test_header_injection(self):
        """Line breaks in the id cannot create headers."""
        msg = target().render(event(ident="x\r\nBcc: victim@example.net"))
        message, _ = parsed(msg)
        assert message["Bcc"] is None
        assert "\n" not in msg.subject

    def test_long_subject(self):
        """A 4096-character id gives a bounded, marked subject."""
        subject = target().render(event(ident="i" * 4096)).subject
        assert len(subject) <= 250 and subject.endswith("…(truncated)")


class TestConfig:
    def test_unknown_key_rejected(self):
        """A typo is named in the error."""
        with pytest.raises(ConfigError, match=r"target\.t\.smtp_server"):
            target(smtp_server="x")

    def test_defaults(self):
        """STARTTLS on 587 is the default; ``ssl`` defaults to 465."""
        assert (target().tls, target().smtp_port) == ("starttls", 587)
        assert target(tls="ssl").smtp_port == 465

    def test_to_as_string(self):
        """A single recipient may be a plain string."""
        assert target(to="a@example.net").to == ("a@example.net",)

    def test_bad_tls(self):
        """``tls`` must be starttls, ssl or none."""
        with pytest.raises(ConfigError, match=r"target\.t\.tls"):
            target(tls="yes")

    def test_bad_address(self):
        """Addresses with display names or line breaks are refused."""
        with pytest.raises(ConfigError, match=r"target\.t\.from"):
            target(**{"from": "Kapacitor <k@example.net>"})
        with pytest.raises(ConfigError, match=r"target\.t\.to"):
            target(to=["a@example.net\r\nBcc: x@example.net"])

    def test_credentials_go_together(self):
        """A username without password is refused."""
        with pytest.raises(ConfigError, match=r"target\.t\.password"):
            target(username="u")

    def test_no_cleartext_auth(self):
        """AUTH over an unencrypted connection is refused."""
        with pytest.raises(ConfigError, match=r"target\.t\.tls"):
            target(username="u", password="p", tls="none")

    def test_secret_not_in_repr(self):
        """The password never shows up in reprs."""
        assert "s3cret-pw" not in repr(target(username="u", password="s3cret-pw"))


class TestSend:
    def test_plain(self):
        """Without TLS the message arrives, passes the strict checks and opens the incident."""
        with SmtpReceiver() as rx:
            t = build("email", rx.target_table())
            send_email(t.render(event()), t, timeout=5)
            assert rx.rejected == []
            [mail] = rx.requests
            assert mail.message["Subject"] == "[CRITICAL] disk_used:host=db-7"
            assert mail.message["In-Reply-To"] == t.thread_id(event())
            assert rx.incidents == {"disk_used:host=db-7": "open"}
            send_email(t.render(recovery()), t, timeout=5)
            assert rx.incidents == {"disk_used:host=db-7": "resolved"}

    def test_starttls_with_auth(self, certificate):
        """STARTTLS then AUTH with the configured credentials."""
        with SmtpReceiver(tls="starttls", certificate=certificate, username="bridge", password="pw") as rx:
            t = build("email", rx.target_table())
            send_email(t.render(event()), t, timeout=5, context=rx.client_context)
            assert rx.logins == ["bridge"] and len(rx.requests) == 1

    def test_implicit_tls(self, certificate):
        """``tls = "ssl"`` speaks TLS from the first byte."""
        with SmtpReceiver(tls="ssl", certificate=certificate) as rx:
            t = build("email", rx.target_table())
            send_email(t.render(event()), t, timeout=5, context=rx.client_context)
            assert len(rx.requests) == 1

    def test_oncall_groups(self):
        """OnCall style opens one group per id and resolves it with the ``OK`` body."""
        with SmtpReceiver() as rx:
            t = build("email", {**rx.target_table(), "style": "oncall"})
            send_email(t.render(event(level="WARNING")), t, timeout=5)
            send_email(t.render(event(level="CRITICAL", previous="WARNING")), t, timeout=5)
            assert list(rx.oncall_groups.values()) == ["open"]
            send_email(t.render(recovery()), t, timeout=5)
            assert list(rx.oncall_groups.values()) == ["resolved"]


class TestErrors:
    def test_temporary_reply_retryable(self):
        """A 4xx reply to DATA is retryable and keeps the code."""
        with SmtpReceiver() as rx:
            rx.fail_next(451)
            t = build("email", rx.target_table())
            with pytest.raises(RetryableError) as info:
                send_email(t.render(event()), t, timeout=5)
            assert info.value.status == 451

    def test_permanent_reply(self):
        """A 5xx reply to DATA is permanent."""
        with SmtpReceiver() as rx:
            rx.fail_next(550)
            t = build("email", rx.target_table())
            with pytest.raises(PermanentError) as info:
                send_email(t.render(event()), t, timeout=5)
            assert info.value.status == 550

    def test_bad_password_permanent(self, certificate):
        """Rejected credentials (535) are permanent."""
        with SmtpReceiver(tls="starttls", certificate=certificate, username="bridge", password="pw") as rx:
            t = build("email", {**rx.target_table(), "password": "wrong"})
            with pytest.raises(PermanentError):
                send_email(t.render(event()), t, timeout=5, context=rx.client_context)

    def test_untrusted_certificate_permanent(self, certificate):
        """A certificate the context does not trust is a configuration error."""
        with SmtpReceiver(tls="ssl", certificate=certificate) as rx:
            t = build("email", rx.target_table())
            with pytest.raises(PermanentError, match="certificate"):
                send_email(t.render(event()), t, timeout=5)

    def test_no_starttls_permanent(self):
        """Asking for STARTTLS from a server without it is permanent."""
        with SmtpReceiver() as rx:
            t = build("email", {**rx.target_table(), "tls": "starttls"})
            with pytest.raises(PermanentError, match="STARTTLS"):
                send_email(t.render(event()), t, timeout=5)

    def test_connection_refused_retryable(self):
        """Nobody listening is retryable."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t = target(smtp_host="127.0.0.1", smtp_port=port, tls="none")
        with pytest.raises(RetryableError):
            send_email(t.render(event()), t, timeout=2)

    def test_silent_server_times_out(self):
        """A server that never greets is a retryable timeout, bounded by ``timeout``."""
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            port = server.getsockname()[1]
            accepted = []
            thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
            thread.start()
            t = target(smtp_host="127.0.0.1", smtp_port=port, tls="none")
            try:
                with pytest.raises(RetryableError):
                    send_email(t.render(event()), t, timeout=0.5)
            finally:
                thread.join(2)
                for conn in accepted:
                    conn.close()


class TestProperties:
    @FUZZ
    @given(alert_events(huge=50_000))
    def test_every_event_is_valid_mail(self, ev):
        """Any parseable event renders to a message a strict MTA accepts, in both styles."""
        for style in ("mailbox", "oncall"):
            t = target(style=style)
            message, raw = parsed(t.render(ev), t)
            assert validate_email(message, raw, "kapacitor@example.net", ("oncall@example.net",)) == []
