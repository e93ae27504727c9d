"""Plain webhook: Kapacitor's JSON, or a body rendered from a ``string.Template`` file.

Template variables: ``$id $level $previous_level $message $details $time
$duration_seconds $series $tags_json $fields_json $event_json`` (JSON-escaped
variants end in ``_json``). ``string.Template`` keeps operator templates free of
code execution, which matters for a sidecar that holds on-call credentials.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Dict, Mapping, Optional

from ..errors import ConfigError
from ..event import AlertEvent, format_time
from .base import HttpRequest, Options, RateLimit, register

__all__ = ["Webhook", "template_values"]


def template_values(event: AlertEvent) -> Dict[str, str]:
    """The substitutions offered to webhook templates."""
    return {
        "id": event.id,
        "id_json": json.dumps(event.id),
        "level": event.level,
        "previous_level": event.previous_level,
        "message": event.message,
        "message_json": json.dumps(event.message),
        "details": event.details,
        "details_json": json.dumps(event.details),
        "time": format_time(event.time),
        "duration_seconds": f"{event.duration_ns / 1e9:g}",
        "series": event.series_name,
        "tags_json": json.dumps(dict(event.tags), sort_keys=True),
        "fields_json": json.dumps(dict(event.fields), sort_keys=True, default=str),
        "event_json": event.to_json().decode(),
    }


@register("webhook")
@dataclass(frozen=True)
class Webhook:
    """POST to any URL; Level ``OK`` is forwarded as is so the receiver can resolve."""

    name: str
    url: str = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    template: Optional[string.Template] = field(default=None, repr=False)
    content_type: str = "application/json"

    type_name: ClassVar[str]
    default_rate_limit: ClassVar[Optional[RateLimit]] = None

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "Webhook":
        url = opts.str("url", required=True)
        headers = opts.str_map("headers")
        path = opts.str("template")
        content_type = opts.str("content_type", "application/json")
        opts.finish()
        template = None
        if path:
            try:
                template = string.Template(Path(path).read_text(encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(f"{opts.prefix}.template", f"cannot read: {exc.strerror}") from None
            bad = _template_problem(template)
            if bad:
                raise ConfigError(f"{opts.prefix}.template", bad)
        return cls(name=name, url=url, headers=headers, template=template, content_type=content_type)

    def render(self, event: AlertEvent) -> HttpRequest:
        headers = {"Content-Type": self.content_type, **self.headers}
        if self.template is None:
            body = event.to_json()
        else:
            body = self.template.substitute(template_values(event)).encode("utf-8")
        return HttpRequest("POST", self.url, headers, body)


def _template_problem(template: string.Template) -> Optional[str]:
    """Name an unknown ``$variable`` now rather than failing every delivery later."""
    known = set(template_values(_SAMPLE))
    for match in template.pattern.finditer(template.template):
        name = match.group("named") or match.group("braced")
        if match.group("invalid") is not None:
            return "invalid '$' placeholder (write $$ for a literal dollar)"
        if name and name not in known:
            return f"unknown variable ${name} (known: {', '.join(sorted(known))})"
    return None


def _sample() -> AlertEvent:
    from datetime import datetime, timezone

    return AlertEvent(id="x", level="OK", time=datetime(2000, 1, 1, tzinfo=timezone.utc))


_SAMPLE = _sample()
