"""Squadcast (SolarWinds Incident Response) Incident Webhook: trigger, then resolve by ``event_id``.

Squadcast's payload-format page: ``message`` and ``description`` are mandatory to
trigger; ``{"status": "resolve", "event_id": ...}`` resolves every open incident
carrying that id; ``tags`` values are strings (or ``{color, value}``); a body over
30 KB is not processed (HTTP 413). We count 30 KB as 30000 bytes, the stricter
reading, and cut ``description`` first, then the series tags, then ``message``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional

from ..event import AlertEvent
from ._common import (
    JSON_HEADERS,
    check_levels,
    hashed_key,
    json_bytes,
    json_size,
    scrub,
    title,
    truncate_json,
    url_option,
)
from .base import TRUNCATED, HttpRequest, Options, RateLimit, register, truncate

__all__ = ["DEFAULT_LEVELS", "MAX_BODY_BYTES", "Squadcast"]

DEFAULT_LEVELS: Mapping[str, str] = {"CRITICAL": "critical", "WARNING": "warning", "INFO": "info"}
MAX_BODY_BYTES = 30_000
#: No documented limits for these; a title longer than this is unreadable anyway,
#: and a bounded ``event_id`` keeps room for the description inside 30 KB.
MAX_MESSAGE = 1024
MAX_EVENT_ID = 1024
MAX_TAG_VALUE = 256
#: Bytes always left for the mandatory description.
_DESCRIPTION_FLOOR = 256


@register("squadcast")
@dataclass(frozen=True)
class Squadcast:
    """POST to the service's Incident Webhook URL (``.../v2/incidents/api/<token>``)."""

    name: str
    url: str = field(repr=False)
    levels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))

    type_name: ClassVar[str]
    #: Squadcast: 15 incidents per minute on the smallest plan (Pro 300, Premium 500,
    #: Enterprise 1000; resolves count too). Raise it with ``rate_limit``.
    default_rate_limit: ClassVar[Optional[RateLimit]] = RateLimit(15, 60.0)

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "Squadcast":
        url = url_option(opts)
        levels = check_levels(opts, opts.levels(DEFAULT_LEVELS))
        opts.finish()
        return cls(name=name, url=url, levels=levels)

    def event_id(self, event: AlertEvent) -> str:
        return hashed_key(scrub(event.id), MAX_EVENT_ID)

    def render(self, event: AlertEvent) -> HttpRequest:
        if event.is_recovery:
            body: Dict[str, Any] = {"status": "resolve", "event_id": self.event_id(event)}
        else:
            body = self._trigger(event)
        return HttpRequest("POST", self.url, dict(JSON_HEADERS), json_bytes(body))

    def _trigger(self, event: AlertEvent) -> Dict[str, Any]:
        tags: Dict[str, Any] = {
            scrub(k): truncate(scrub(v), MAX_TAG_VALUE) for k, v in sorted(event.tags.items()) if v
        }
        tags.update(severity=self.levels[event.level], kapacitor_level=event.level, source="kapacitor")
        text = title(event)
        description = scrub(event.details) if event.details.strip() else text
        body: Dict[str, Any] = {
            "message": truncate(text, MAX_MESSAGE),
            "description": "",
            "status": "trigger",
            "event_id": self.event_id(event),
            "tags": tags,
        }
        if json_size(body) > MAX_BODY_BYTES - _DESCRIPTION_FLOOR:
            body["tags"] = {"severity": tags["severity"], "kapacitor_level": event.level, "source": "kapacitor"}
        size = json_size(body)
        if size > MAX_BODY_BYTES - _DESCRIPTION_FLOOR:
            message = body["message"]
            body["message"] = truncate_json(message, MAX_BODY_BYTES - _DESCRIPTION_FLOOR - (size - json_size(message)))
            if not body["message"]:
                body["message"] = TRUNCATED
        size = json_size(body)
        body["description"] = truncate_json(description, MAX_BODY_BYTES - size + json_size("")) or TRUNCATED
        return body
