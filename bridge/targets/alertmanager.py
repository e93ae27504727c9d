"""Prometheus Alertmanager API v2: ``POST /api/v2/alerts`` with a JSON array of alerts.

Alertmanager identifies an alert by its label set, so the labels of one Kapacitor id
must never change while it fires: ``alertname`` (series name), ``kapacitor_id``, the
group tags the id itself encodes (``host=a`` in ``cpu:host=a``), the tags named in
``labels`` (opt-in) and ``severity``. Every other tag goes to the annotations: an OK
whose ``cpu=cpu-total`` differs from the CRITICAL's ``cpu=cpu3`` still resolves it.

Alertmanager forgets an alert ``resolve_timeout`` after its last update and on every
restart, so a firing alert carries ``endsAt`` = now + 4 × ``resend_interval`` (what
Prometheus does) and :mod:`bridge.keepalive` re-posts every open one each interval.
An OK resolves exactly the severities the platform was told (the incident ledger's
``fired_levels``, passed to :meth:`Alertmanager.render_told`), with the label sets
that were sent. ``startsAt`` is clamped to [epoch, now]: an event time in the future
would otherwise get ``400 start time must be before end time`` and lose the alert.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple

from ..errors import ConfigError
from ..event import AlertEvent, EventError, parse
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
    title,
    url_option,
)
from .base import HttpRequest, Options, RateLimit, register

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_RESEND",
    "RESERVED_LABELS",
    "Alertmanager",
    "Told",
    "alert_annotations",
    "alert_labels",
    "id_group_tags",
    "label_name",
]

DEFAULT_LEVELS: Mapping[str, str] = {"CRITICAL": "critical", "WARNING": "warning", "INFO": "info"}
RESERVED_LABELS = ("alertname", "kapacitor_id", "severity")
API_PATH = "/api/v2/alerts"
#: Prometheus' default resend delay; must stay well below Alertmanager's resolve_timeout (5m).
DEFAULT_RESEND = 60.0
#: ``endsAt`` of a firing alert is this many resend intervals ahead (Prometheus uses 4).
ENDS_AHEAD = 4
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
#: ``key=value`` pairs of Kapacitor's group id (``host=a,cpu=b``) after the name or a ``:``.
_GROUP_PAIR = re.compile(r"(?:^|[:,\n])([^=:,\n]+)=([^,\n]*)")


class Told(Protocol):
    """What the platform was last told about an id (``bridge.ledger.Incident`` satisfies it)."""

    @property
    def level(self) -> str: ...

    @property
    def fired_levels(self) -> Tuple[str, ...]: ...

    @property
    def body(self) -> bytes: ...


def label_name(key: str) -> str:
    """Map a tag key onto ``[a-zA-Z_][a-zA-Z0-9_]*`` (``host-name`` -> ``host_name``)."""
    name = _INVALID.sub("_", key)
    if not name or name[0].isdigit():
        name = "_" + name
    return name


def id_group_tags(event: AlertEvent) -> Dict[str, str]:
    """The group tags the id encodes: ``key=value`` pairs of the id whose key is a tag.

    Kapacitor's default id is ``{{.Name}}:{{.Group}}`` with the group ``host=a,cpu=b``;
    when the event carries tags, only pairs naming a tag count (so a ``=`` in a custom
    id does not invent a label); without tags (a state read back from Kapacitor's API)
    every pair counts. Either way the result depends on the id alone for one series.
    """
    tags = event.tags
    pairs: Dict[str, str] = {}
    for match in _GROUP_PAIR.finditer(event.id):
        key, value = match.group(1), match.group(2)
        if tags and tags.get(key) != value:
            continue
        pairs.setdefault(key, value)
    return pairs


def alert_labels(event: AlertEvent, severity: str, opt_in: Iterable[str] = ()) -> Dict[str, str]:
    """The label set identifying ``event``'s alert: stable for one id and severity.

    Sanitized names that collide keep the first in sorted order; a tag named like a
    reserved label gets a ``tag_`` prefix; empty values are dropped (as Alertmanager does).
    """
    chosen = dict(id_group_tags(event))
    tags = event.tags
    for key in opt_in:
        if key in tags:
            chosen.setdefault(key, tags[key])
    labels: Dict[str, str] = {}
    for key, value in sorted(chosen.items()):
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


def alert_annotations(event: AlertEvent, labels: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``summary``/``description`` (what receivers expect) plus the tags that are not labels."""
    text = title(event)
    out = {"summary": text, "description": scrub(event.details) if event.details.strip() else text}
    if labels is not None:
        for key, value in sorted(event.tags.items()):
            name = label_name(scrub(key))
            if name in out or name in RESERVED_LABELS:
                name = "tag_" + name
            if labels.get(name) == scrub(value) or not value:
                continue
            out.setdefault(name, scrub(value))
    return out


def _seconds(when: datetime) -> float:
    return when.timestamp()


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


@register("alertmanager")
@dataclass(frozen=True)
class Alertmanager:
    """POST alerts to ``<url>/api/v2/alerts`` of an Alertmanager (and of each further HA member in ``urls``)."""

    name: str
    #: The first member; may carry basic-auth credentials (``https://user:pass@am.example.net``).
    url: str = field(repr=False)
    levels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    link_template: Optional[LinkTemplate] = None
    #: Seconds between keep-alive re-posts of every open alert.
    resend_interval: float = DEFAULT_RESEND
    #: Every HA member: ``url`` then ``urls``; ``url`` alone is a one-member cluster.
    urls: Tuple[str, ...] = field(default=(), repr=False)
    #: Tag keys made labels although the id does not encode them (must be stable per id).
    labels: Tuple[str, ...] = ()

    type_name: ClassVar[str]
    #: Self-hosted: no platform limit.
    default_rate_limit: ClassVar[Optional[RateLimit]] = None

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "Alertmanager":
        single = url_option(opts)
        many = opts.str_list("urls")
        named = [("url", single)] + [(f"urls[{i}]", u) for i, u in enumerate(many)]
        urls: List[str] = []
        for key, item in named:
            check_url(opts, key, item)
            url = item.rstrip("/")
            urls.append(url if url.endswith(API_PATH) else url + API_PATH)
        if len(set(urls)) != len(urls):
            raise ConfigError(f"{opts.prefix}.urls", "lists the same Alertmanager twice")
        levels = check_levels(opts, opts.levels(DEFAULT_LEVELS))
        link = opts.str("link_template")
        resend = _duration_option(opts, "resend_interval", DEFAULT_RESEND)
        labels = opts.str_list("labels")
        for i, key in enumerate(labels):
            if label_name(key) in RESERVED_LABELS:
                raise ConfigError(f"{opts.prefix}.labels[{i}]", f"{key!r} is a reserved label")
        opts.finish()
        template = LinkTemplate.parse(f"{opts.prefix}.link_template", link) if link else None
        return cls(
            name=name,
            url=urls[0],
            levels=levels,
            link_template=template,
            resend_interval=resend,
            urls=tuple(urls),
            labels=tuple(labels),
        )

    def fan_out(self) -> List["Alertmanager"]:
        """One target per HA member (each gets its own delivery queue, retries and ledger)."""
        return [replace(self, url=url, urls=(url,)) for url in self.members]

    @property
    def members(self) -> Tuple[str, ...]:
        """Every Alertmanager to post to (an HA cluster does not share alerts)."""
        return self.urls or (self.url,)

    def warnings(self) -> List[str]:
        """Settings that work but will misbehave (``check-config`` prints them)."""
        if self.resend_interval >= 300:
            return [
                f"resend_interval = {self.resend_interval:g}s is not below Alertmanager's default "
                "resolve_timeout (5m): open alerts may resolve themselves between re-posts"
            ]
        return []

    # -- rendering --------------------------------------------------------------------

    def render(self, event: AlertEvent) -> HttpRequest:
        """Without the ledger (``send-test``): an OK resolves the previous level's severity."""
        return self.render_told(event, None)

    def render_told(self, event: AlertEvent, told: Optional[Told], now: Optional[float] = None) -> HttpRequest:
        """The request for ``event`` given what the platform was told about its id."""
        alerts = self.alerts(event, told, time.time() if now is None else now)
        return self.request(alerts)

    def request(self, alerts: Sequence[Mapping[str, Any]], url: Optional[str] = None) -> HttpRequest:
        """One POST of ``alerts`` (to ``url``, default the first member)."""
        return HttpRequest("POST", url or self.url, dict(JSON_HEADERS), json_bytes(list(alerts)))

    def alerts(self, event: AlertEvent, told: Optional[Told], now: float) -> List[Dict[str, Any]]:
        """Pure: the alerts to post for ``event`` at ``now``.

        Firing: the current severity with ``endsAt`` ahead, and every other severity that
        fired in this incident resolved (a level change must not leave the old one firing).
        OK: every severity that fired, resolved, with the labels that were sent.
        """
        sent = _told_event(told) or event
        fired = self._fired(event, told)
        alerts: List[Dict[str, Any]] = []
        if event.is_recovery:
            for severity in fired:
                alerts.append(self._alert(sent, severity, now, now))
            return alerts
        current = self.levels[event.level]
        alerts.append(self._alert(event, current, now, now + ENDS_AHEAD * self.resend_interval))
        for severity in fired:
            if severity != current:
                alerts.append(self._alert(sent, severity, now, now))
        return alerts

    def keepalive(self, told: Told, now: float) -> Optional[Dict[str, Any]]:
        """The re-post of an open incident: its last level, firing, ``endsAt`` ahead."""
        event = _told_event(told)
        severity = self.levels.get(told.level)
        if event is None or severity is None:
            return None
        return self._alert(event, severity, now, now + ENDS_AHEAD * self.resend_interval)

    def _fired(self, event: AlertEvent, told: Optional[Told]) -> List[str]:
        """Severities the platform has seen firing for this id, in order, without repeats."""
        if told is not None:
            levels: Iterable[str] = told.fired_levels or (told.level,)
        else:
            levels = (event.previous_level,)
        return list(dict.fromkeys(self.levels[lv] for lv in levels if lv in self.levels))

    def _alert(self, event: AlertEvent, severity: str, now: float, ends: float) -> Dict[str, Any]:
        labels = alert_labels(event, severity, self.labels)
        starts = min(max(_seconds(episode_start(event)), _seconds(EPOCH)), now)
        alert: Dict[str, Any] = {
            "labels": labels,
            "annotations": alert_annotations(event, labels),
            "startsAt": rfc3339(_at(starts)),
            "endsAt": rfc3339(_at(max(ends, starts))),
        }
        if self.link_template is not None:
            link = self.link_template.render(event)
            if link:
                alert["generatorURL"] = link
        return alert


def _told_event(told: Optional[Told]) -> Optional[AlertEvent]:
    """The event last delivered for the incident (its labels are what the platform holds)."""
    if told is None:
        return None
    try:
        return parse(told.body)
    except EventError:
        return None


def _duration_option(opts: Options, key: str, default: float) -> float:
    from ..config import parse_duration  # late: config imports the targets package

    value = opts._get(key, None, object, False)  # noqa: SLF001 - a string or a number of seconds
    if value is None:
        return default
    seconds = parse_duration(value, f"{opts.prefix}.{key}")
    if seconds <= 0:
        raise ConfigError(f"{opts.prefix}.{key}", "must be positive")
    return seconds
