"""Prometheus Alertmanager API v2: ``POST /api/v2/alerts`` with a JSON array of alerts.

Alertmanager identifies an alert by its label set, so every event of one Kapacitor id
must carry the same labels: ``alertname`` (series name), the series tags,
``kapacitor_id`` and ``severity``. Label names must match ``[a-zA-Z_][a-zA-Z0-9_]*``
(Alertmanager's classic validation), so tag keys are sanitized; empty values are
dropped, as Alertmanager itself does before validating.

Because ``severity`` is part of the identity, a level change would leave the old
alert firing: an escalation also posts the previous severity as resolved, and a
recovery resolves every severity the id could have. Resolving an alert that never
fired is harmless (Alertmanager does not notify a resolved alert it never sent).
Times before 1970 are clamped to the epoch: Go's zero time (year 1) means "unset"
to Alertmanager, and no real data point is that old. A firing alert is posted
without ``endsAt``, so Alertmanager resolves it after its
``resolve_timeout`` unless Kapacitor keeps sending (it re-sends every evaluation
unless ``.stateChangesOnly()`` is used).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional

from ..event import AlertEvent
from ._common import (
    EPOCH,
    JSON_HEADERS,
    LinkTemplate,
    check_levels,
    episode_start,
    json_bytes,
    rfc3339,
    scrub,
    title,
    url_option,
)
from .base import HttpRequest, Options, RateLimit, register

__all__ = ["DEFAULT_LEVELS", "RESERVED_LABELS", "Alertmanager", "alert_annotations", "alert_labels", "label_name"]

DEFAULT_LEVELS: Mapping[str, str] = {"CRITICAL": "critical", "WARNING": "warning", "INFO": "info"}
RESERVED_LABELS = ("alertname", "kapacitor_id", "severity")
API_PATH = "/api/v2/alerts"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def label_name(key: str) -> str:
    """Map a tag key onto ``[a-zA-Z_][a-zA-Z0-9_]*`` (``host-name`` -> ``host_name``)."""
    name = _INVALID.sub("_", key)
    if not name or name[0].isdigit():
        name = "_" + name
    return name


def alert_labels(event: AlertEvent, severity: str) -> Dict[str, str]:
    """The label set identifying ``event``'s alert; stable for one id and severity.

    Tags whose sanitized names collide keep the first in sorted order; a tag named
    like a reserved label gets a ``tag_`` prefix. ``kapacitor_id`` keeps ids unique
    whatever the tags.
    """
    labels: Dict[str, str] = {}
    for key, value in sorted(event.tags.items()):
        value = scrub(value)
        if not value:
            continue
        name = label_name(scrub(key))
        if name in RESERVED_LABELS:
            name = "tag_" + name
        labels.setdefault(name, value)
    labels["alertname"] = scrub(event.series_name) or "kapacitor"
    labels["kapacitor_id"] = scrub(event.id)
    labels["severity"] = severity
    return labels


def alert_annotations(event: AlertEvent) -> Dict[str, str]:
    """``summary``/``description``: the names Prometheus rules and receivers expect."""
    text = title(event)
    return {"summary": text, "description": scrub(event.details) if event.details.strip() else text}


@register("alertmanager")
@dataclass(frozen=True)
class Alertmanager:
    """POST alerts to ``<url>/api/v2/alerts`` of an Alertmanager (or anything speaking its API)."""

    name: str
    #: May carry basic-auth credentials (``https://user:pass@am.example.net``).
    url: str = field(repr=False)
    levels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    link_template: Optional[LinkTemplate] = None

    type_name: ClassVar[str]
    #: Self-hosted: no platform limit.
    default_rate_limit: ClassVar[Optional[RateLimit]] = None

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "Alertmanager":
        url = url_option(opts).rstrip("/")
        if not url.endswith(API_PATH):
            url += API_PATH
        levels = check_levels(opts, opts.levels(DEFAULT_LEVELS))
        link = opts.str("link_template")
        opts.finish()
        template = LinkTemplate.parse(f"{opts.prefix}.link_template", link) if link else None
        return cls(name=name, url=url, levels=levels, link_template=template)

    def render(self, event: AlertEvent) -> HttpRequest:
        starts = rfc3339(max(episode_start(event), EPOCH))
        ends = rfc3339(max(event.time, EPOCH))
        alerts: List[Dict[str, Any]] = []
        if event.is_recovery:
            for severity in dict.fromkeys(self.levels.values()):
                alerts.append(self._alert(event, severity, starts, ends))
        else:
            current = self.levels[event.level]
            alerts.append(self._alert(event, current, starts, None))
            previous = self.levels.get(event.previous_level)
            if previous is not None and previous != current:
                alerts.append(self._alert(event, previous, starts, ends))
        return HttpRequest("POST", self.url, dict(JSON_HEADERS), json_bytes(alerts))

    def _alert(self, event: AlertEvent, severity: str, starts: str, ends: Optional[str]) -> Dict[str, Any]:
        alert: Dict[str, Any] = {
            "labels": alert_labels(event, severity),
            "annotations": alert_annotations(event),
            "startsAt": starts,
        }
        if ends is not None:
            alert["endsAt"] = ends
        if self.link_template is not None:
            link = self.link_template.render(event)
            if link:
                alert["generatorURL"] = link
        return alert
