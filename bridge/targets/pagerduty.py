"""PagerDuty Events API v2: ``trigger`` for every non-OK level, ``resolve`` on OK.

Limits (PagerDuty developer docs, PagerDuty/api-schema ``events-v2``): ``dedup_key``
at most 255 characters, ``payload.summary`` at most 1024 (longer is a 400), the
event at most 512 KB (Alertmanager's notifier uses 512000 bytes; so do we), and a
``routing_key`` of exactly 32 characters (``Length of 'routing_key' is incorrect``).
Every 400 is permanent, so the formatter fits all of them before sending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional

from ..errors import ConfigError
from ..event import AlertEvent
from ._common import (
    JSON_HEADERS,
    check_levels,
    hashed_key,
    json_bytes,
    json_size,
    rfc3339,
    scrub,
    title,
    truncate_json,
    url_option,
)
from .base import HttpRequest, Options, RateLimit, register, truncate

__all__ = ["DEFAULT_LEVELS", "MAX_BODY_BYTES", "PagerDuty", "SEVERITIES"]

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITIES = ("critical", "error", "warning", "info")
DEFAULT_LEVELS: Mapping[str, str] = {"CRITICAL": "critical", "WARNING": "warning", "INFO": "info"}
MAX_BODY_BYTES = 512_000
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
#: ``source``/``class`` have no documented limit; a tag value can be huge, and a
#: host name longer than this is not a host name.
MAX_SHORT_FIELD = 1024
CLIENT = "kapacitor-oncall"


@register("pagerduty")
@dataclass(frozen=True)
class PagerDuty:
    """POST Events API v2 events; ``dedup_key`` is the Kapacitor id (hashed past 255)."""

    name: str
    routing_key: str = field(repr=False)
    url: str = DEFAULT_URL
    levels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))

    type_name: ClassVar[str]
    #: PagerDuty: about 120 events per minute per routing key (60 s sliding window).
    default_rate_limit: ClassVar[Optional[RateLimit]] = RateLimit(120, 60.0)

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "PagerDuty":
        routing_key = opts.str("routing_key", required=True)
        if len(routing_key) != 32:
            raise ConfigError(
                f"{opts.prefix}.routing_key",
                "must be 32 characters (the integration key of an Events API v2 integration, not a REST API key)",
            )
        url = url_option(opts, DEFAULT_URL)
        levels = check_levels(opts, opts.levels(DEFAULT_LEVELS), SEVERITIES)
        opts.finish()
        return cls(name=name, routing_key=routing_key, url=url, levels=levels)

    def dedup_key(self, event: AlertEvent) -> str:
        """Stable per id: the id itself, or a hash-suffixed prefix when longer than 255."""
        return hashed_key(scrub(event.id), MAX_DEDUP_KEY)

    def render(self, event: AlertEvent) -> HttpRequest:
        if event.is_recovery:
            body: Dict[str, Any] = {
                "routing_key": self.routing_key,
                "event_action": "resolve",
                "dedup_key": self.dedup_key(event),
            }
        else:
            body = self._trigger(event)
        return HttpRequest("POST", self.url, dict(JSON_HEADERS), json_bytes(body))

    def _trigger(self, event: AlertEvent) -> Dict[str, Any]:
        details: Dict[str, Any] = {
            "kapacitor_id": scrub(event.id),
            "level": event.level,
            "previous_level": event.previous_level,
            "duration_seconds": event.duration_ns / 1e9,
            "tags": {scrub(k): scrub(v) for k, v in event.tags.items()},
            "fields": dict(event.fields),
            "details": scrub(event.details),
        }
        tags = event.tags
        candidates = (tags.get("host"), tags.get("hostname"), event.series_name, "kapacitor")
        source = next(c for c in candidates if c and c.strip())
        payload = {
            "summary": truncate(title(event), MAX_SUMMARY),
            "source": truncate(scrub(source), MAX_SHORT_FIELD),
            "severity": self.levels[event.level],
            "timestamp": rfc3339(event.time),
            "class": truncate(scrub(event.series_name), MAX_SHORT_FIELD),
            "custom_details": details,
        }
        body = {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": self.dedup_key(event),
            "client": CLIENT,
            "payload": payload,
        }
        return _fit(body, details)


def _fit(body: Dict[str, Any], details: Dict[str, Any]) -> Dict[str, Any]:
    """Keep the event under 512000 bytes: cut ``details`` text first, then drop the
    tag and field maps (what Alertmanager's notifier does), then cut the id copy."""
    text = details["details"]
    for drop in ((), ("tags", "fields"), ("kapacitor_id",)):
        for key in drop:
            details[key] = "removed: the event exceeded PagerDuty's 512000-byte limit"
        details["details"] = text
        size = json_size(body)
        if size <= MAX_BODY_BYTES:
            return body
        details["details"] = truncate_json(text, MAX_BODY_BYTES - (size - json_size(text)))
        if json_size(body) <= MAX_BODY_BYTES:
            return body
    return body
