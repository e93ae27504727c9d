"""Splunk On-Call (VictorOps) REST endpoint: ``message_type`` from the level, ``RECOVERY`` on OK.

``message_type`` is the only required field; ``OK`` is no longer accepted (it must be
``RECOVERY``). ``entity_id`` must be identical for trigger and recovery, or the
incident never resolves; it is org-wide, so operators with several environments
should make Kapacitor ids unique across them. ``state_message`` is cut at 20480
characters, the incident-fields-glossary limit Alertmanager's notifier enforces.
"""

from __future__ import annotations

import calendar
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional

from ..event import AlertEvent
from ._common import JSON_HEADERS, check_levels, episode_start, json_bytes, scrub, title, url_option
from .base import HttpRequest, Options, RateLimit, register, truncate

__all__ = ["DEFAULT_LEVELS", "MESSAGE_TYPES", "SplunkOnCall"]

MESSAGE_TYPES = ("CRITICAL", "WARNING", "INFO")
DEFAULT_LEVELS: Mapping[str, str] = {"CRITICAL": "CRITICAL", "WARNING": "WARNING", "INFO": "INFO"}
MAX_STATE_MESSAGE = 20480
#: Not documented; a display name is a title, and the id is kept whole in ``entity_id``.
MAX_DISPLAY_NAME = 1024


@register("splunk-oncall")
@dataclass(frozen=True)
class SplunkOnCall:
    """POST to ``.../integrations/generic/20131114/alert/<api_key>/<routing_key>``."""

    name: str
    url: str = field(repr=False)
    levels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))

    type_name: ClassVar[str]
    #: Splunk On-Call documents no rate limit for the REST endpoint.
    default_rate_limit: ClassVar[Optional[RateLimit]] = None

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "SplunkOnCall":
        url = url_option(opts)
        levels = check_levels(opts, opts.levels(DEFAULT_LEVELS), MESSAGE_TYPES)
        opts.finish()
        return cls(name=name, url=url, levels=levels)

    def render(self, event: AlertEvent) -> HttpRequest:
        text = title(event)
        message = text if not event.details.strip() else f"{text}\n\n{scrub(event.details)}"
        started = event.time if event.is_recovery else episode_start(event)
        body: Dict[str, Any] = {
            "message_type": "RECOVERY" if event.is_recovery else self.levels[event.level],
            "entity_id": scrub(event.id),
            "entity_display_name": truncate(text, MAX_DISPLAY_NAME),
            "state_message": truncate(message, MAX_STATE_MESSAGE),
            "state_start_time": _epoch(started),
            "timestamp": _epoch(event.time),
            "monitoring_tool": "kapacitor",
        }
        return HttpRequest("POST", self.url, dict(JSON_HEADERS), json_bytes(body))


def _epoch(when: datetime) -> int:
    """Whole Unix seconds, what the REST endpoint expects; never before 1970."""
    return max(0, calendar.timegm(when.utctimetuple()))
