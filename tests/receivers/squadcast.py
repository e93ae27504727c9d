"""Squadcast Incident Webhook (``POST /v2/incidents/api/<token>``), strictly.

From Squadcast's payload-format page: ``Content-Type: application/json`` required;
``message`` and ``description`` mandatory to trigger; ``status`` ``trigger`` or
``resolve`` (a resolve needs only ``event_id``); ``tags`` values are strings or
``{"color", "value"}``; over 30 KB is not processed (413). The success code is
undocumented; this receiver answers 202 like its siblings.
"""

from __future__ import annotations

import re
from typing import Any, List, Tuple

from ._base import Answer, Incoming, Receiver, check_unknown, decode, json_answer, new_token

__all__ = ["SquadcastReceiver", "validate_squadcast"]

KEYS = ("message", "description", "status", "event_id", "tags", "priority")
MAX_BODY_BYTES = 30_000
_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")


def validate_squadcast(body: Any) -> List[str]:
    """Problems with an incident-webhook body (empty: valid)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems = check_unknown(body, "", KEYS)
    status = body.get("status", "trigger")
    if status not in ("trigger", "resolve"):
        problems.append("status must be 'trigger' or 'resolve'")
    if "event_id" in body and (not isinstance(body["event_id"], str) or not body["event_id"]):
        problems.append("event_id must be a non-empty string")
    if status == "resolve":
        if "event_id" not in body:
            problems.append("a resolve needs event_id")
    else:
        for name in ("message", "description"):
            value = body.get(name)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{name} is mandatory to trigger an incident")
    for name in ("message", "description", "priority"):
        if name in body and not isinstance(body[name], str):
            problems.append(f"{name} must be a string")
    if "tags" in body:
        tags = body["tags"]
        if not isinstance(tags, dict):
            problems.append("tags must be an object")
        else:
            for key, value in tags.items():
                if isinstance(value, dict):
                    if not isinstance(value.get("value"), str) or not _COLOR.match(str(value.get("color", ""))):
                        problems.append(f"tags.{key} must be a string or {{color: '#RRGGBB', value}}")
                elif not isinstance(value, str):
                    problems.append(f"tags.{key} must be a string")
    return problems


class SquadcastReceiver(Receiver):
    """A resolve closes every open incident carrying the event_id."""

    type_name = "squadcast"

    def __init__(self, token: str = "") -> None:
        super().__init__()
        self.token = token or new_token(40)

    @property
    def url(self) -> str:
        return f"{self.base_url}/v2/incidents/api/{self.token}"

    def inspect(self, req: Incoming) -> Tuple[int, List[str]]:
        if req.method != "POST" or not req.path.startswith("/v2/incidents/api/"):
            return 404, [f"no such endpoint: {req.method} {req.path}"]
        if req.path != f"/v2/incidents/api/{self.token}":
            return 401, ["unknown API token"]
        if req.content_type != "application/json":
            return 400, [f"Content-Type must be application/json, not {req.content_type or 'missing'}"]
        if len(req.body) > MAX_BODY_BYTES:
            return 413, [f"payload is {len(req.body)} bytes, over the 30 KB limit"]
        body, problems = decode(req)
        return 400, problems or validate_squadcast(body)

    def accept(self, req: Incoming) -> Answer:
        body = req.json()
        key = body.get("event_id")
        if key is not None:
            if body.get("status", "trigger") == "resolve":
                if key in self._incidents:
                    self._resolve(key)
            else:
                self._open(key)
        return json_answer(202, {"status": "accepted"})
