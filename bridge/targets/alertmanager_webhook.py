"""The Alertmanager webhook payload (version 4), one alert per notification group.

What Grafana OnCall's Alertmanager integration, Squadcast's and ilert's Prometheus
sources accept. OnCall groups on ``groupKey`` and resolves on ``status: resolved``,
so ``groupKey`` is the Kapacitor id and ``fingerprint`` a hash of it: both stable
for the id whatever the level. Squadcast's source wants ``labels.severity`` and
``annotations.summary``/``description``; both are always present. A recovery keeps
the severity of the level it recovers from so its labels match the firing alert.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional

from ..event import AlertEvent
from ._common import (
    EPOCH,
    JSON_HEADERS,
    LinkTemplate,
    check_levels,
    check_url,
    episode_start,
    json_bytes,
    rfc3339,
    scrub,
    url_option,
)
from .alertmanager import DEFAULT_LEVELS, alert_annotations, alert_labels
from .base import HttpRequest, Options, RateLimit, register

__all__ = ["AlertmanagerWebhook", "ZERO_TIME", "fingerprint"]

#: What Alertmanager puts in ``endsAt`` while an alert fires (Go's zero time).
ZERO_TIME = "0001-01-01T00:00:00Z"


def fingerprint(event_id: str) -> str:
    """16 hex digits, like Alertmanager's label fingerprint, but derived from the id alone."""
    return hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@register("alertmanager-webhook")
@dataclass(frozen=True)
class AlertmanagerWebhook:
    """POST a v4 webhook body to any Alertmanager-compatible receiver URL."""

    name: str
    url: str = field(repr=False)
    levels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    link_template: Optional[LinkTemplate] = None
    receiver: str = "kapacitor-oncall"
    external_url: str = ""

    type_name: ClassVar[str]
    #: The receiving platform's limit applies (OnCall: 300/5m); set ``rate_limit``.
    default_rate_limit: ClassVar[Optional[RateLimit]] = None

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "AlertmanagerWebhook":
        url = url_option(opts)
        levels = check_levels(opts, opts.levels(DEFAULT_LEVELS))
        link = opts.str("link_template")
        receiver = opts.str("receiver", "kapacitor-oncall")
        external = opts.str("external_url")
        if external is not None:
            check_url(opts, "external_url", external)
        opts.finish()
        template = LinkTemplate.parse(f"{opts.prefix}.link_template", link) if link else None
        return cls(
            name=name,
            url=url,
            levels=levels,
            link_template=template,
            receiver=receiver,
            external_url=external or "",
        )

    def render(self, event: AlertEvent) -> HttpRequest:
        status = "resolved" if event.is_recovery else "firing"
        if event.is_recovery:
            severity = self.levels.get(event.previous_level, self.levels["CRITICAL"])
        else:
            severity = self.levels[event.level]
        labels = alert_labels(event, severity)
        annotations = alert_annotations(event)
        alert: Dict[str, Any] = {
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(max(episode_start(event), EPOCH)),
            "endsAt": rfc3339(max(event.time, EPOCH)) if event.is_recovery else ZERO_TIME,
            "generatorURL": self.link_template.render(event) if self.link_template else "",
            "fingerprint": fingerprint(event.id),
        }
        body = {
            "version": "4",
            "groupKey": scrub(event.id),
            "truncatedAlerts": 0,
            "status": status,
            "receiver": self.receiver,
            "groupLabels": {"alertname": labels["alertname"], "kapacitor_id": labels["kapacitor_id"]},
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": self.external_url,
            "alerts": [alert],
        }
        return HttpRequest("POST", self.url, dict(JSON_HEADERS), json_bytes(body))
