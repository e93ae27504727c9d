"""Splunk On-Call REST endpoint (``/integrations/generic/20131114/alert/<api_key>/<routing_key>``).

``message_type`` is the only required field (CRITICAL, WARNING, INFO,
ACKNOWLEDGEMENT, RECOVERY; ``OK`` is refused); times are epoch seconds;
``state_message`` ≤ 20480 characters; any other key becomes a custom field, so
unknown keys are allowed but must be scalars. An omitted ``entity_id`` gets a
random one, which makes recovery impossible: flagged as a problem here.
Answers 200 ``{"result":"success","entity_id":...}``; 404 for a wrong key.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ._base import Answer, Incoming, Receiver, decode, json_answer, new_token

__all__ = ["SplunkOnCallReceiver", "validate_splunk_oncall"]

MESSAGE_TYPES = ("CRITICAL", "WARNING", "INFO", "ACKNOWLEDGEMENT", "RECOVERY")
PREFIX = "/integrations/generic/20131114/alert/"


def validate_splunk_oncall(body: Any) -> List[str]:
    """Problems with a REST-endpoint alert body (empty: valid)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems = []
    if body.get("message_type") not in MESSAGE_TYPES:
        problems.append(f"message_type must be one of {', '.join(MESSAGE_TYPES)}")
    entity = body.get("entity_id")
    if not isinstance(entity, str) or not entity:
        problems.append("entity_id missing: a random one would be assigned and no RECOVERY could match it")
    for name in ("entity_display_name", "state_message", "monitoring_tool"):
        if name in body and not isinstance(body[name], str):
            problems.append(f"{name} must be a string")
    message = body.get("state_message")
    if isinstance(message, str) and len(message) > 20480:
        problems.append("state_message is longer than 20480 characters")
    for name in ("state_start_time", "timestamp"):
        if name in body:
            value = body[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be epoch seconds (a non-negative integer)")
    for key, value in body.items():
        if isinstance(value, (dict, list)):
            problems.append(f"custom field {key} must be a scalar")
    return problems


class SplunkOnCallReceiver(Receiver):
    """Incidents per entity_id; RECOVERY resolves."""

    type_name = "splunk-oncall"

    def __init__(self, api_key: str = "", routing_key: str = "team-ops") -> None:
        super().__init__()
        self.api_key = api_key or new_token(36)
        self.routing_key = routing_key

    @property
    def url(self) -> str:
        return f"{self.base_url}{PREFIX}{self.api_key}/{self.routing_key}"

    def inspect(self, req: Incoming) -> Tuple[int, List[str]]:
        if req.method != "POST" or not req.path.startswith(PREFIX):
            return 404, [f"no such endpoint: {req.method} {req.path}"]
        keys = req.path[len(PREFIX):].split("/")
        if len(keys) != 2 or keys[0] != self.api_key or not keys[1]:
            return 404, ["URL or API key not found"]
        if keys[1] != self.routing_key:
            return 404, [f"unknown routing key {keys[1]!r}"]
        if req.content_type != "application/json":
            return 400, [f"Content-Type must be application/json, not {req.content_type or 'missing'}"]
        body, problems = decode(req)
        return 400, problems or validate_splunk_oncall(body)

    def accept(self, req: Incoming) -> Answer:
        body = req.json()
        entity = body["entity_id"]
        kind = body["message_type"]
        if kind in ("CRITICAL", "WARNING"):
            self._open(entity)
        elif kind == "RECOVERY" and entity in self._incidents:
            self._resolve(entity)
        return json_answer(200, {"result": "success", "entity_id": entity})

    def refuse(self, status: int, problems: List[str]) -> Answer:
        return json_answer(status, {"result": "failure", "message": "; ".join(problems)})

    def target_table(self) -> Dict[str, Any]:
        return {"type": self.type_name, "url": self.url}
