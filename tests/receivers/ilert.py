"""ilert Events API (``POST /api/events``), strictly, per the OpenAPI ``Event`` schema.

Required on every event: ``integrationKey``, ``eventType`` (ALERT, ACCEPT, RESOLVE,
COMMENT) and ``summary``. ``priority`` HIGH or LOW, ``severity`` 1–5, ``labels`` a
string map, ``customDetails`` any object. ``alertKey`` compares case-insensitively.
Answers 202; 400 for invalid events; 404 for an unknown integration key.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ._base import Answer, Incoming, Receiver, check_string_map, check_unknown, decode, json_answer, new_token

__all__ = ["IlertReceiver", "validate_ilert"]

EVENT_TYPES = ("ALERT", "ACCEPT", "RESOLVE", "COMMENT")
KEYS = (
    "integrationKey", "apiKey", "eventType", "summary", "details", "alertKey", "priority", "severity",
    "images", "links", "comments", "labels", "services", "customDetails", "routingKey",
)


def validate_ilert(body: Any) -> List[str]:
    """Problems with an ilert event body (empty: valid)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems = check_unknown(body, "", KEYS)
    if not isinstance(body.get("integrationKey", body.get("apiKey")), str):
        problems.append("integrationKey is required")
    if body.get("eventType") not in EVENT_TYPES:
        problems.append(f"eventType must be one of {', '.join(EVENT_TYPES)}")
    if not isinstance(body.get("summary"), str):
        problems.append("summary is required")
    for name in ("details", "alertKey", "routingKey"):
        if name in body and not isinstance(body[name], str):
            problems.append(f"{name} must be a string")
    if "priority" in body and body["priority"] not in ("HIGH", "LOW"):
        problems.append("priority must be HIGH or LOW")
    if "severity" in body:
        sev = body["severity"]
        if not isinstance(sev, int) or isinstance(sev, bool) or not 1 <= sev <= 5:
            problems.append("severity must be an integer 1..5")
    if "labels" in body:
        problems += check_string_map(body["labels"], "labels")
    if "customDetails" in body and not isinstance(body["customDetails"], dict):
        problems.append("customDetails must be an object")
    for name in ("images", "links", "comments", "services"):
        if name in body and not isinstance(body[name], list):
            problems.append(f"{name} must be a list")
    return problems


class IlertReceiver(Receiver):
    """Open alerts per alertKey (case-insensitive, as ilert compares them)."""

    type_name = "ilert"
    path = "/api/events"

    def __init__(self, integration_key: str = "") -> None:
        super().__init__()
        self.integration_key = integration_key or "il1api" + new_token(24)

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def target_table(self) -> Dict[str, Any]:
        return {"type": self.type_name, "url": self.url, "integration_key": self.integration_key}

    def inspect(self, req: Incoming) -> Tuple[int, List[str]]:
        if req.method != "POST" or req.path != self.path:
            return 404, [f"no such endpoint: {req.method} {req.path}"]
        if req.content_type != "application/json":
            return 415, [f"Content-Type must be application/json, not {req.content_type or 'missing'}"]
        body, problems = decode(req)
        if problems:
            return 400, problems
        problems = validate_ilert(body)
        if problems:
            return 400, problems
        if body.get("integrationKey", body.get("apiKey")) != self.integration_key:
            return 404, ["No alert source found for this integration key"]
        return 400, []

    def accept(self, req: Incoming) -> Answer:
        body = req.json()
        key = body.get("alertKey")
        if key is not None:
            known = {k.lower(): k for k in self._incidents}
            existing = known.get(key.lower(), key)
            if body["eventType"] == "ALERT":
                self._open(existing)
            elif body["eventType"] == "RESOLVE" and existing in self._incidents:
                self._resolve(existing)
        return json_answer(202, {"eventType": body["eventType"], "alertKey": key})

    def refuse(self, status: int, problems: List[str]) -> Answer:
        return json_answer(status, {"message": "; ".join(problems)})
