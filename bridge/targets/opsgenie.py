"""Opsgenie Alert API v2: create on every non-OK level, close by alias on OK.

Limits from docs.opsgenie.com (alert-api, alerts-and-alert-fields): ``message`` 130
characters, ``alias`` 512, ``description`` 15000, ``entity`` 512, ``source`` 100,
``note`` 25000, ``tags`` at most 20 of 50 characters, ``details`` a flat map of
strings of at most 8000 characters in total (nested values are a 422). Close must
say ``identifierType=alias``: without it Opsgenie answers 202 and closes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import quote

from ..event import AlertEvent
from ._common import check_levels, hashed_key, json_bytes, rfc3339, scrub, title, url_option
from .base import TRUNCATED, HttpRequest, Options, RateLimit, register, truncate

__all__ = ["DEFAULT_LEVELS", "PRIORITIES", "Opsgenie", "details_map", "tag_list"]

DEFAULT_URL = "https://api.opsgenie.com"
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
#: Kapacitor's own opsgenie2 handler: CRITICAL P1, WARNING P3, INFO P5.
DEFAULT_LEVELS: Mapping[str, str] = {"CRITICAL": "P1", "WARNING": "P3", "INFO": "P5"}
MAX_MESSAGE = 130
MAX_ALIAS = 512
MAX_DESCRIPTION = 15000
MAX_ENTITY = 512
MAX_NOTE = 25000
MAX_TAGS = 20
MAX_TAG = 50
MAX_DETAILS = 8000
#: Room kept in the details budget for the ``_truncated`` note.
_NOTE_KEY = "_truncated"
SOURCE = "kapacitor-oncall"


@register("opsgenie")
@dataclass(frozen=True)
class Opsgenie:
    """``POST <url>/v2/alerts`` to open, ``POST <url>/v2/alerts/<alias>/close`` to close."""

    name: str
    api_key: str = field(repr=False)
    url: str = DEFAULT_URL
    levels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVELS))

    type_name: ClassVar[str]
    #: Opsgenie documents per-plan token buckets without numbers: no default.
    default_rate_limit: ClassVar[Optional[RateLimit]] = None

    @classmethod
    def from_options(cls, name: str, opts: Options) -> "Opsgenie":
        api_key = opts.str("api_key", required=True)
        url = url_option(opts, DEFAULT_URL).rstrip("/")
        levels = check_levels(opts, opts.levels(DEFAULT_LEVELS), PRIORITIES)
        opts.finish()
        return cls(name=name, api_key=api_key, url=url, levels=levels)

    def alias(self, event: AlertEvent) -> str:
        """The Kapacitor id, hash-suffixed past 512 characters so it stays stable and unique."""
        return hashed_key(scrub(event.id), MAX_ALIAS)

    def render(self, event: AlertEvent) -> HttpRequest:
        headers = {"Content-Type": "application/json", "Authorization": f"GenieKey {self.api_key}"}
        if event.is_recovery:
            url = f"{self.url}/v2/alerts/{quote(self.alias(event), safe='')}/close?identifierType=alias"
            note = f"Recovered at {rfc3339(event.time)}: {title(event)}"
            body: Dict[str, Any] = {"source": SOURCE, "note": truncate(note, MAX_NOTE)}
            return HttpRequest("POST", url, headers, json_bytes(body))
        text = title(event)
        description = text if not event.details.strip() else f"{text}\n\n{scrub(event.details)}"
        body = {
            "message": truncate(text, MAX_MESSAGE),
            "alias": self.alias(event),
            "description": truncate(description, MAX_DESCRIPTION),
            "priority": self.levels[event.level],
            "entity": truncate(scrub(event.id), MAX_ENTITY),
            "source": SOURCE,
            "tags": tag_list(event),
            "details": details_map(event),
        }
        return HttpRequest("POST", f"{self.url}/v2/alerts", headers, json_bytes(body))


def tag_list(event: AlertEvent) -> List[str]:
    """``kapacitor``, the level and ``key:value`` per series tag: at most 20 of 50 characters."""
    candidates = ["kapacitor", event.level.lower()]
    candidates += [f"{scrub(k)}:{scrub(v)}" for k, v in sorted(event.tags.items())]
    tags: List[str] = []
    for tag in candidates:
        tag = truncate(tag.strip(), MAX_TAG)
        if tag and tag not in tags:
            tags.append(tag)
        if len(tags) == MAX_TAGS:
            break
    return tags


def details_map(event: AlertEvent) -> Dict[str, str]:
    """Flat string map within 8000 characters (keys plus values), most useful first.

    Kapacitor's ``details`` (often a large JSON dump) comes last so it is what gets
    cut; anything cut or dropped leaves a ``_truncated`` entry behind.
    """
    entries: List[Tuple[str, str]] = [
        ("kapacitor_id", scrub(event.id)),
        ("level", event.level),
        ("previous_level", event.previous_level),
        ("time", rfc3339(event.time)),
        ("duration_seconds", f"{event.duration_ns / 1e9:g}"),
        ("series", scrub(event.series_name)),
    ]
    entries += [(f"tag.{scrub(k)}", scrub(v)) for k, v in sorted(event.tags.items())]
    entries += [(f"field.{scrub(k)}", _text(v)) for k, v in sorted(event.fields.items())]
    if event.details:
        entries.append(("details", scrub(event.details)))
    return _fill(entries, MAX_DETAILS)


def _fill(entries: Iterable[Tuple[str, str]], budget: int) -> Dict[str, str]:
    room = budget - len(_NOTE_KEY) - len(TRUNCATED)
    out: Dict[str, str] = {}
    cut = False
    for key, value in entries:
        key = truncate(key, 100)
        if not key or key in out:
            continue
        left = room - len(key)
        if len(value) <= left:
            out[key] = value
            room = left - len(value)
            continue
        cut = True
        if left > len(TRUNCATED):
            out[key] = truncate(value, left)
        break
    if cut:
        out[_NOTE_KEY] = TRUNCATED
    return out


def _text(value: Any) -> str:
    return scrub(value) if isinstance(value, str) else scrub(json.dumps(value, default=str))
