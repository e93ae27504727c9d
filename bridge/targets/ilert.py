"""ilert Events API: ``ALERT`` for every non-OK level, ``RESOLVE`` on OK, keyed by ``alertKey``.

The OpenAPI ``Event`` schema requires ``integrationKey``, ``eventType`` and ``summary``
on every event, so the resolve repeats the summary. ilert documents no length
limits (``alertKey`` "will be trimmed if necessary"), so the bridge sets its own:
a trimmed key could merge two alerts, hence the hash suffix past 255 characters,
and the body is kept under 256 KB so one noisy ``details`` cannot stall a queue.
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
    rfc3339,
    scrub,
    title,
    truncate_json,
    url_option,
)
from .base import HttpRequest, Options, RateLimit, register, truncate

__all__ = ["DEFAULT_LEVELS", "MAX_BODY_BYTES", "PRIORITIES", "Ilert"]

DEFAULT_URL = "https://api.ilert.com/api/events"
PRIORITIES = ("HIGH", "LOW")
DEFAULT_LEVELS: Mapping[str, str] = {"CRITICAL": "HIGH", "WARNING": "LOW", "INFO": "LOW"}
MAX_SUMMARY = 1024
MAX_ALERT_KEY = 255
MAX_BODY_BYTES = 256_000


@register("ilert")
@dataclass(frozen=True)
class Ilert:
    """POST ilert events; the integration key travels in the body, not a header."""

    name: str
    integration_key: str = field(repr=False)
    url: str = DEFAULT_URL
    levels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))

    type_name: ClassVar[str]
    #: ilert: 50 requests per minute per alert-source integration key.
    default_rate_limit: ClassVar[Optional[RateLimit]] = RateLimit(50, 60.0)

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "Ilert":
        key = opts.str("integration_key", required=True)
        url = url_option(opts, DEFAULT_URL)
        levels = check_levels(opts, opts.levels(DEFAULT_LEVELS), PRIORITIES)
        opts.finish()
        return cls(name=name, integration_key=key, url=url, levels=levels)

    def alert_key(self, event: AlertEvent) -> str:
        return hashed_key(scrub(event.id), MAX_ALERT_KEY)

    def render(self, event: AlertEvent) -> HttpRequest:
        body: Dict[str, Any] = {
            "integrationKey": self.integration_key,
            "eventType": "RESOLVE" if event.is_recovery else "ALERT",
            "summary": truncate(title(event), MAX_SUMMARY),
            "alertKey": self.alert_key(event),
        }
        if not event.is_recovery:
            body["priority"] = self.levels[event.level]
            body["labels"] = {scrub(k): scrub(v) for k, v in event.tags.items()}
            body["customDetails"] = {
                "kapacitor_id": scrub(event.id),
                "level": event.level,
                "previous_level": event.previous_level,
                "time": rfc3339(event.time),
                "duration_seconds": event.duration_ns / 1e9,
                "series": scrub(event.series_name),
                "fields": dict(event.fields),
            }
            body["details"] = scrub(event.details) or title(event)
            body = _fit(body)
        return HttpRequest("POST", self.url, dict(JSON_HEADERS), json_bytes(body))


def _fit(body: Dict[str, Any]) -> Dict[str, Any]:
    """Cut ``details`` first; if labels and custom details alone are too big, drop them."""
    text = body["details"]
    for drop in ((), ("labels", "customDetails")):
        for key in drop:
            body.pop(key, None)
        body["details"] = text
        size = json_size(body)
        if size <= MAX_BODY_BYTES:
            return body
        body["details"] = truncate_json(text, MAX_BODY_BYTES - (size - json_size(text)))
        if json_size(body) <= MAX_BODY_BYTES:
            return body
    return body
