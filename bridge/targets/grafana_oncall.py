"""Grafana OnCall, Kapacitor integration: Kapacitor's own JSON, unchanged.

OnCall groups by ``id`` and resolves when ``level`` starts with ``OK``, so the
event needs no translation; the integration URL carries the secret token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ..event import AlertEvent
from .base import HttpRequest, Options, RateLimit, register

__all__ = ["GrafanaOnCall"]

JSON = {"Content-Type": "application/json"}


@register("grafana-oncall")
@dataclass(frozen=True)
class GrafanaOnCall:
    """POST the event as Kapacitor sent it to ``<oncall>/integrations/v1/kapacitor/<token>/``."""

    name: str
    url: str = field(repr=False)

    type_name: ClassVar[str]
    #: OnCall's code default: 300 POSTs per 5 minutes per integration.
    default_rate_limit: ClassVar[Optional[RateLimit]] = RateLimit(300, 300.0)

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "GrafanaOnCall":
        target = cls(name=name, url=opts.str("url", required=True))
        opts.finish()
        return target

    def render(self, event: AlertEvent) -> HttpRequest:
        return HttpRequest("POST", self.url, JSON, event.to_json())


