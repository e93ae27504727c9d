"""The Alertmanager webhook payload (version 4), one notification group per Kapacitor id.

What Grafana OnCall's Alertmanager integration, Squadcast's and ilert's Prometheus
sources accept. The body is what a real Alertmanager (v0.35) sends for a group
``group_by: [alertname, kapacitor_id]`` on its root route, key for key and in its
order (checked against one captured by ``tests/alertmanager``): ``groupKey`` is
``{}:{alertname="…", kapacitor_id="…"}``, each alert's ``fingerprint`` is
Alertmanager's hash of its label set (FNV-1a over sorted names and values),
``notification_reason`` and ``routeLabels`` are there (v0.34+), ``externalURL`` is the
bridge's own URL unless ``external_url`` is set.

With the ledger (``render_told``) a level change lists the severity that fired before
as resolved (as Alertmanager would), and an OK resolves exactly the severities that
fired, with the label sets that were sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence

from ..event import AlertEvent
from ._common import EPOCH, JSON_HEADERS, LinkTemplate, check_levels, check_url, episode_start, json_bytes, rfc3339, url_option
from .alertmanager import DEFAULT_LEVELS, Told, _told_event, alert_annotations, alert_labels
from .base import HttpRequest, Options, RateLimit, register

__all__ = ["AlertmanagerWebhook", "ZERO_TIME", "fingerprint", "go_quote", "group_key"]

#: What Alertmanager puts in ``endsAt`` while an alert fires (Go's zero time).
ZERO_TIME = "0001-01-01T00:00:00Z"
#: Alertmanager's ``model.SeparatorByte`` and the 64-bit FNV-1a constants of prometheus/common.
_SEPARATOR = 0xFF
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK = (1 << 64) - 1
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               "\\": "\\\\", '"': '\\"'}


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's alert fingerprint: 16 hex digits of FNV-1a over the sorted label pairs."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8", "surrogatepass"):
                h = ((h ^ byte) * _FNV_PRIME) & _MASK
            h = ((h ^ _SEPARATOR) * _FNV_PRIME) & _MASK
    return f"{h:016x}"


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote`` (printable Unicode kept, the rest escaped)."""
    out = ['"']
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def group_key(group_labels: Mapping[str, str], route_key: str = "{}") -> str:
    """``<route key>:<group labels>`` as Alertmanager's dispatcher builds it (root route: ``{}``)."""
    pairs = ", ".join(f"{name}={go_quote(group_labels[name])}" for name in sorted(group_labels))
    return f"{route_key}:{{{pairs}}}"


def _common(maps: Sequence[Mapping[str, str]]) -> Dict[str, str]:
    """The pairs every map shares (Alertmanager's commonLabels / commonAnnotations)."""
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


@register("alertmanager-webhook")
@dataclass(frozen=True)
class AlertmanagerWebhook:
    """POST a v4 webhook body to any Alertmanager-compatible receiver URL."""

    name: str
    url: str = field(repr=False)
    levels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    link_template: Optional[LinkTemplate] = None
    receiver: str = "kapacitor-oncall"
    #: ``externalURL``; empty until the config binds it to the bridge's own URL.
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

    def with_bridge_url(self, bridge_url: str) -> "AlertmanagerWebhook":
        """``externalURL`` defaults to where the bridge listens (what Alertmanager puts there)."""
        return self if self.external_url else replace(self, external_url=bridge_url)

    def render(self, event: AlertEvent) -> HttpRequest:
        return self.render_told(event, None)

    def render_told(self, event: AlertEvent, told: Optional[Told], now: Optional[float] = None) -> HttpRequest:
        body = self.message(event, told, time.time() if now is None else now)
        return HttpRequest("POST", self.url, dict(JSON_HEADERS), json_bytes(body))

    def message(self, event: AlertEvent, told: Optional[Told], now: float) -> Dict[str, Any]:
        """Pure: the v4 body for ``event`` given what the receiver was told."""
        sent = _told_event(told) or event
        fired = self._fired(event, told)
        # Resolved at the event's time (what happened), never later than now.
        ends = min(max(event.time, EPOCH), datetime.fromtimestamp(now, tz=timezone.utc))
        alerts: List[Dict[str, Any]] = []
        if event.is_recovery:
            for severity in fired:
                alerts.append(self._alert(sent, severity, "resolved", ends))
            reason = "all alerts resolved"
        else:
            current = self.levels[event.level]
            alerts.append(self._alert(event, current, "firing", None))
            resolved = [s for s in fired if s != current]
            for severity in resolved:
                alerts.append(self._alert(sent, severity, "resolved", ends))
            if told is None:
                reason = "first notification"
            elif current not in fired:
                reason = "new alerts added"
            elif resolved and told.level != event.level:
                reason = "some alerts resolved"
            else:
                reason = "repeat interval elapsed"
        status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
        first = alerts[0]["labels"]
        group = {"alertname": first["alertname"], "kapacitor_id": first["kapacitor_id"]}
        # Key order and names exactly as Alertmanager's notify/webhook.Message encodes them.
        return {
            "receiver": self.receiver,
            "status": status,
            "alerts": alerts,
            "notification_reason": reason,
            "groupLabels": group,
            "commonLabels": _common([a["labels"] for a in alerts]),
            "commonAnnotations": _common([a["annotations"] for a in alerts]),
            "routeLabels": {},
            "externalURL": self.external_url,
            "version": "4",
            "groupKey": group_key(group),
            "truncatedAlerts": 0,
        }

    def _fired(self, event: AlertEvent, told: Optional[Told]) -> List[str]:
        if told is not None:
            levels: Sequence[str] = told.fired_levels or (told.level,)
        elif event.is_recovery:
            levels = (event.previous_level if event.previous_level in self.levels else "CRITICAL",)
        else:
            levels = (event.previous_level,)
        return list(dict.fromkeys(self.levels[lv] for lv in levels if lv in self.levels))

    def _alert(self, event: AlertEvent, severity: str, status: str, ends: Optional[datetime]) -> Dict[str, Any]:
        labels = alert_labels(event, severity)
        starts = max(episode_start(event), EPOCH)
        if ends is not None:
            starts = min(starts, ends)
        return {
            "status": status,
            "labels": labels,
            "annotations": alert_annotations(event, labels),
            "startsAt": rfc3339(starts),
            "endsAt": rfc3339(ends) if ends is not None else ZERO_TIME,
            "generatorURL": self.link_template.render(event) if self.link_template else "",
            "fingerprint": fingerprint(labels),
        }
