"""Send an :class:`~bridge.targets.base.EmailMessage` over SMTP, mapping failures onto the error tree.

SMTP reply codes carry the retry decision themselves: 4xx is "try again later"
(greylisting, full queue, temporary auth failure), 5xx is final (unknown mailbox,
relay denied, bad credentials). Network errors and timeouts are retryable;
certificate failures and a server that lacks STARTTLS are configuration problems,
so they are permanent: retrying cannot fix them and would hide them.

A server that accepts some recipients and refuses others has delivered the
message: retrying would send duplicates to the accepted ones, so the refusal is
logged and the delivery counts as done.
"""

from __future__ import annotations

import email.message
import email.policy
import smtplib
import ssl
from email.utils import formatdate
from typing import Any, Dict, Optional, Protocol, Sequence, Tuple

import structlog

from .errors import PermanentError, RetryableError
from .targets.base import EmailMessage

__all__ = ["SmtpTarget", "build_message", "send_email"]

log = structlog.get_logger(__name__)


class SmtpTarget(Protocol):
    """The connection settings :func:`send_email` reads (``bridge.targets.email.Email``)."""

    name: str
    smtp_host: str
    smtp_port: int
    from_addr: str
    to: Tuple[str, ...]
    tls: str
    username: Optional[str]
    password: Optional[str]


def build_message(msg: EmailMessage, target: SmtpTarget) -> email.message.EmailMessage:
    """The RFC 5322 message: plain text, UTF-8, threading headers set."""
    out = email.message.EmailMessage(policy=email.policy.SMTP)
    out["From"] = target.from_addr
    out["To"] = ", ".join(target.to)
    out["Subject"] = msg.subject
    out["Message-ID"] = msg.message_id
    if msg.in_reply_to:
        out["In-Reply-To"] = msg.in_reply_to
    for name, value in msg.headers.items():
        if name in out:
            del out[name]
        out[name] = value
    if msg.in_reply_to and "References" not in out:
        out["References"] = msg.in_reply_to
    if "Date" not in out:
        out["Date"] = formatdate(usegmt=True)
    out.set_content(msg.body, charset="utf-8")
    return out


def send_email(
    msg: EmailMessage,
    target: SmtpTarget,
    timeout: float,
    *,
    context: Optional[ssl.SSLContext] = None,
    ca_file: Optional[str] = None,
) -> None:
    """Deliver ``msg`` to ``target.to``; raise ``RetryableError`` or ``PermanentError``.

    The server certificate is verified against ``context``, else ``ca_file`` (the
    target's private CA), else the system store. ``timeout`` bounds every socket
    operation.
    """
    message = build_message(msg, target)
    where = f"{target.smtp_host}:{target.smtp_port}"
    try:
        if context is None:
            context = ssl.create_default_context(cafile=ca_file)
        refused = _send(message, target, timeout, context)
    except ssl.SSLCertVerificationError as exc:
        raise PermanentError(f"SMTP {where}: certificate not trusted: {exc.verify_message}") from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentError(f"SMTP {where}: {exc}") from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise _refused(where, exc.recipients) from exc
    except smtplib.SMTPResponseException as exc:
        raise _reply(where, exc.smtp_code, exc.smtp_error) from exc
    except smtplib.SMTPServerDisconnected as exc:
        raise RetryableError(f"SMTP {where}: server disconnected: {exc}") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise RetryableError(f"SMTP {where}: {type(exc).__name__}: {exc}") from exc
    if refused:
        log.warning(
            "smtp.partly_refused",
            target=target.name,
            message_id=msg.message_id,
            refused={addr: code for addr, (code, _) in refused.items()},
        )


def _send(
    message: email.message.EmailMessage, target: SmtpTarget, timeout: float, context: ssl.SSLContext
) -> Dict[str, Tuple[int, bytes]]:
    client: smtplib.SMTP
    if target.tls == "ssl":
        client = smtplib.SMTP_SSL(target.smtp_host, target.smtp_port, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(target.smtp_host, target.smtp_port, timeout=timeout)
    try:
        client.ehlo()
        if target.tls == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if target.username is not None and target.password is not None:
            client.login(target.username, target.password)
        refused = client.send_message(message, from_addr=target.from_addr, to_addrs=list(target.to))
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            pass  # the message is accepted once DATA got its 250; a lost QUIT changes nothing
        return dict(refused)
    finally:
        client.close()


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _reply(where: str, code: int, text: Any) -> Exception:
    """4xx retry, 5xx give up; anything else (a broken server) retry."""
    message = f"SMTP {where}: {code} {_text(text)}"
    if 500 <= code < 600:
        return PermanentError(message, status=code, body=_text(text))
    return RetryableError(message, status=code, body=_text(text))


def _refused(where: str, recipients: Dict[str, Tuple[int, Any]]) -> Exception:
    """Every recipient refused: retry only if every refusal was temporary."""
    codes: Sequence[int] = [code for code, _ in recipients.values()]
    detail = "; ".join(f"{addr}: {code} {_text(text)}" for addr, (code, text) in recipients.items())
    worst = max(codes) if codes else 550
    if all(400 <= code < 500 for code in codes):
        return RetryableError(f"SMTP {where}: recipients refused: {detail}", status=worst, body=detail)
    return PermanentError(f"SMTP {where}: recipients refused: {detail}", status=worst, body=detail)
