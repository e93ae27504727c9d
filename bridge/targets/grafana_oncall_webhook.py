"""Grafana OnCall, Formatted Webhook integration: ``alert_uid`` groups, ``state: ok`` resolves.

OnCall's template for this integration (``engine/config_integrations/formatted_webhook.py``)
groups on ``alert_uid`` and resolves when ``state.upper() == "OK"``. The title and
message of a group are rendered from its latest alert, so the resolve repeats them
(grafana/oncall#3614). Unlike the Kapacitor integration, this one has a heartbeat
endpoint, so the same integration can watch the bridge itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

from ..event import AlertEvent
from ._common import JSON_HEADERS, LinkTemplate, check_url, json_bytes, scrub, title, url_option
from .base import HttpRequest, Options, RateLimit, register

__all__ = ["GrafanaOnCallWebhook"]


@register("grafana-oncall-webhook")
@dataclass(frozen=True)
class GrafanaOnCallWebhook:
    """POST to ``<oncall>/integrations/v1/formatted_webhook/<token>/`` (keep the slash)."""

    name: str
    url: str = field(repr=False)
    link_template: Optional[LinkTemplate] = None
    image_url: Optional[str] = None

    type_name: ClassVar[str]
    #: OnCall's code default: 300 POSTs per 5 minutes per integration.
    default_rate_limit: ClassVar[Optional[RateLimit]] = RateLimit(300, 300.0)

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "GrafanaOnCallWebhook":
        url = url_option(opts)
        link = opts.str("link_template")
        image = opts.str("image_url")
        if image is not None:
            check_url(opts, "image_url", image)
        opts.finish()
        template = LinkTemplate.parse(f"{opts.prefix}.link_template", link) if link else None
        return cls(name=name, url=url, link_template=template, image_url=image)

    def render(self, event: AlertEvent) -> HttpRequest:
        text = title(event)
        body: Dict[str, Any] = {
            "alert_uid": scrub(event.id),
            "title": text,
            "message": text if not event.details.strip() else f"{text}\n\n{scrub(event.details)}",
            "state": "ok" if event.is_recovery else "alerting",
        }
        if self.image_url:
            body["image_url"] = self.image_url
        if self.link_template is not None:
            body["link_to_upstream_details"] = self.link_template.render(event)
        return HttpRequest("POST", self.url, dict(JSON_HEADERS), json_bytes(body))
