"""E-mail over SMTP: one message per trigger and per resolve, threaded per alert id.

Every message of one id carries ``In-Reply-To``/``References`` pointing at the same
synthetic thread root (``<kapacitor-oncall.<hash>@<domain>>``), so mail clients group
an alert's history whatever its subject. ``Message-ID`` itself is unique per
event (id hash, level, event time), so a re-sent delivery keeps its Message-ID and
mail systems can drop the duplicate.

Two subject styles:

``mailbox`` (default)
    ``[CRITICAL] cpu:host=web-01`` — level and id in the subject.
``oncall``
    For Grafana OnCall's inbound-email integration, which groups on the upper-cased
    subject and resolves when the plain-text body is exactly ``OK``
    (``engine/config_integrations/inbound_email.py``): the subject is the same for
    every event of an id (``[kapacitor] <id>``), the level leads the body, and a
    recovery's body is ``OK``. A level in the subject would open a new alert group
    on every level change and never resolve the first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from email.utils import format_datetime, parseaddr
from typing import ClassVar, Dict, Optional, Tuple

from ..errors import ConfigError
from ..event import AlertEvent
from ._common import rfc3339, scrub, title
from .base import EmailMessage, Options, RateLimit, register, truncate, truncate_bytes

__all__ = ["STYLES", "TLS_MODES", "Email"]

TLS_MODES = ("starttls", "ssl", "none")
STYLES = ("mailbox", "oncall")
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
#: RFC 5322 caps a header line at 998 octets; folded subjects are fine, but a 4 KB
#: subject is useless in every client and some gateways reject long headers.
MAX_SUBJECT = 250
MAX_HEADER_VALUE = 900
#: Far below the 10 MB+ SIZE limit common SMTP servers announce.
MAX_BODY_BYTES = 1_000_000
_DOMAIN_CHARS = re.compile(r"[^A-Za-z0-9.-]")


@register("email")
@dataclass(frozen=True)
class Email:
    """Send through an SMTP server (``bridge.smtp.send_email`` does the I/O)."""

    name: str
    smtp_host: str
    from_addr: str
    to: Tuple[str, ...]
    smtp_port: int = 587
    tls: str = "starttls"
    username: Optional[str] = field(default=None, repr=False)
    password: Optional[str] = field(default=None, repr=False)
    style: str = "mailbox"

    type_name: ClassVar[str]
    #: Mail servers rate-limit per account in very different ways: no default.
    default_rate_limit: ClassVar[Optional[RateLimit]] = None

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "Email":
        host = opts.str("smtp_host", required=True)
        tls = opts.str("tls", "starttls")
        if tls not in TLS_MODES:
            raise ConfigError(f"{opts.prefix}.tls", f"must be one of {', '.join(TLS_MODES)}")
        port = opts.int("smtp_port", DEFAULT_PORTS[tls])
        if not 0 < port < 65536:
            raise ConfigError(f"{opts.prefix}.smtp_port", "must be between 1 and 65535")
        sender = _address(opts, "from", opts.str("from", required=True))
        try:
            to = opts.str_list("to")
        except ConfigError:
            to = (opts.str("to", required=True),)
        if not to:
            raise ConfigError(f"{opts.prefix}.to", "needs at least one address")
        recipients = tuple(_address(opts, f"to[{i}]" if len(to) > 1 else "to", a) for i, a in enumerate(to))
        username = opts.str("username")
        password = opts.str("password")
        if (username is None) != (password is None):
            missing = "password" if password is None else "username"
            raise ConfigError(f"{opts.prefix}.{missing}", "username and password go together")
        if username is not None and tls == "none":
            raise ConfigError(f"{opts.prefix}.tls", "SMTP AUTH needs tls = \"starttls\" or \"ssl\" (no cleartext passwords)")
        style = opts.str("style", "mailbox")
        if style not in STYLES:
            raise ConfigError(f"{opts.prefix}.style", f"must be one of {', '.join(STYLES)}")
        opts.finish()
        return cls(
            name=name,
            smtp_host=host,
            from_addr=sender,
            to=recipients,
            smtp_port=port,
            tls=tls,
            username=username,
            password=password,
            style=style,
        )

    @property
    def domain(self) -> str:
        """Right-hand side of Message-IDs: the sender's domain, so they are globally unique."""
        domain = _DOMAIN_CHARS.sub("", self.from_addr.rpartition("@")[2])
        return domain or "kapacitor-oncall.invalid"

    def thread_id(self, event: AlertEvent) -> str:
        """The synthetic thread root every message of this id refers to."""
        return f"<kapacitor-oncall.{_digest(event.id)}@{self.domain}>"

    def render(self, event: AlertEvent) -> EmailMessage:
        ident = _one_line(scrub(event.id))
        if self.style == "oncall":
            # OnCall upper-cases the subject to group: the hash keeps ids that differ
            # only in case, blanks or past the cut in separate groups.
            subject = truncate(f"[kapacitor] {ident}", MAX_SUBJECT - 10) + f" #{_digest(event.id)[:8]}"
            body = "OK" if event.is_recovery else f"{event.level}\n\n{_body(event)}"
        else:
            subject = truncate(f"[{event.level}] {ident}", MAX_SUBJECT)
            body = _body(event)
        stamp = event.time.strftime("%Y%m%dT%H%M%S%fZ")
        message_id = f"<kapacitor-oncall.{_digest(event.id)}.{event.level.lower()}.{stamp}@{self.domain}>"
        thread = self.thread_id(event)
        headers: Dict[str, str] = {
            "References": thread,
            "Date": format_datetime(event.time),
            "X-Kapacitor-Id": truncate(ident, MAX_HEADER_VALUE),
            "X-Kapacitor-Level": event.level,
        }
        return EmailMessage(
            subject=subject,
            body=truncate_bytes(body, MAX_BODY_BYTES),
            message_id=message_id,
            in_reply_to=thread,
            headers=headers,
        )


def _body(event: AlertEvent) -> str:
    lines = [
        title(event),
        "",
        f"Alert:     {scrub(event.id)}",
        f"Level:     {event.level} (was {event.previous_level})",
        f"Time:      {rfc3339(event.time)}",
        f"Duration:  {event.duration_ns / 1e9:g} s",
        f"Series:    {scrub(event.series_name)}",
    ]
    lines += [f"Tag:       {scrub(k)}={scrub(v)}" for k, v in sorted(event.tags.items())]
    lines += [f"Field:     {scrub(k)}={scrub(str(v))}" for k, v in sorted(event.fields.items())]
    if event.details.strip():
        lines += ["", scrub(event.details)]
    return "\n".join(lines) + "\n"


def _digest(event_id: str) -> str:
    return hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _one_line(text: str) -> str:
    """Header values may not contain line breaks (header injection, and ``email`` refuses them)."""
    return " ".join(text.split()) or "-"


def _address(opts: Options, key: str, value: str) -> str:
    """A bare ``user@domain``; display names and line breaks are refused."""
    name, addr = parseaddr(value)
    if not addr or "@" not in addr or addr != value.strip() or any(c in value for c in "\r\n"):
        raise ConfigError(f"{opts.prefix}.{key}", f"must be a plain address like alerts@example.net, got {value!r}")
    return addr
