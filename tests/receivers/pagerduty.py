"""PagerDuty Events API v2 (``POST /v2/enqueue``), strictly.

Schema: PagerDuty/api-schema ``reference/events-v2/openapiv3.json`` plus the
developer docs' limits: ``routing_key`` 32 characters, ``dedup_key`` ≤ 255,
``payload.summary`` ≤ 1024, body ≤ 512000 bytes; ``payload`` with ``summary``,
``source`` and ``severity`` is required to trigger. Answers 202
``{"status":"success","message":"Event processed","dedup_key":...}`` or 400
``{"status":"invalid event","message":"Event object is invalid","errors":[...]}``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ._base import Answer, Incoming, Receiver, check_unknown, decode, is_rfc3339, json_answer, new_token

__all__ = ["PagerDutyReceiver", "validate_pagerduty"]

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
TOP_KEYS = ("routing_key", "event_action", "dedup_key", "payload", "client", "client_url", "links", "images")
PAYLOAD_KEYS = ("summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details")
MAX_BODY_BYTES = 512_000


def validate_pagerduty(body: Any) -> List[str]:
    """Problems PagerDuty would report for this event body (empty: valid)."""
    if not isinstance(body, dict):
        return ["event must be a JSON object"]
    problems = check_unknown(body, "", TOP_KEYS)
    key = body.get("routing_key")
    if not isinstance(key, str):
        problems.append("'routing_key' is missing or not a string")
    elif len(key) != 32:
        problems.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = body.get("event_action")
    if action not in ACTIONS:
        problems.append(f"'event_action' must be one of {', '.join(ACTIONS)}")
    dedup = body.get("dedup_key")
    if dedup is not None:
        if not isinstance(dedup, str) or not dedup:
            problems.append("'dedup_key' must be a non-empty string")
        elif len(dedup) > 255:
            problems.append("'dedup_key' is longer than 255 characters")
    elif action in ("acknowledge", "resolve"):
        problems.append(f"'dedup_key' is required to {action}")
    for name in ("client", "client_url"):
        if name in body and not isinstance(body[name], str):
            problems.append(f"'{name}' must be a string")
    for name, need in (("links", "href"), ("images", "src")):
        if name in body:
            items = body[name]
            if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get(need), str) for i in items):
                problems.append(f"'{name}' must be a list of objects with '{need}'")
    if action == "trigger":
        problems += _payload(body.get("payload"))
    elif "payload" in body and not isinstance(body["payload"], dict):
        problems.append("'payload' must be an object")
    return problems


def _payload(payload: Any) -> List[str]:
    if not isinstance(payload, dict):
        return ["'payload' is required to trigger"]
    problems = check_unknown(payload, "payload.", PAYLOAD_KEYS)
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        problems.append("'payload.summary' is required")
    elif len(summary) > 1024:
        problems.append("'payload.summary' is longer than 1024 characters")
    source = payload.get("source")
    if not isinstance(source, str) or not source.strip():
        problems.append("'payload.source' is required")
    if payload.get("severity") not in SEVERITIES:
        problems.append(f"'payload.severity' must be one of {', '.join(SEVERITIES)}")
    if "timestamp" in payload and not is_rfc3339(payload["timestamp"]):
        problems.append("'payload.timestamp' must be an ISO 8601 date-time")
    for name in ("component", "group", "class"):
        if name in payload and not isinstance(payload[name], str):
            problems.append(f"'payload.{name}' must be a string")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        problems.append("'payload.custom_details' must be an object")
    return problems


class PagerDutyReceiver(Receiver):
    """Keeps one alert per dedup key (for the single routing key it accepts)."""

    type_name = "pagerduty"
    path = "/v2/enqueue"

    def __init__(self, routing_key: str = "") -> None:
        super().__init__()
        self.routing_key = routing_key or new_token(32)

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def target_table(self) -> Dict[str, Any]:
        return {"type": self.type_name, "url": self.url, "routing_key": self.routing_key}

    def inspect(self, req: Incoming) -> Tuple[int, List[str]]:
        if req.method != "POST" or req.path != self.path:
            return 404, [f"no such endpoint: {req.method} {req.path}"]
        if req.content_type != "application/json":
            return 400, [f"Content-Type must be application/json, not {req.content_type or 'missing'}"]
        if len(req.body) > MAX_BODY_BYTES:
            return 413, [f"event is {len(req.body)} bytes, over {MAX_BODY_BYTES}"]
        body, problems = decode(req)
        if problems:
            return 400, problems
        problems = validate_pagerduty(body)
        if not problems and body["routing_key"] != self.routing_key:
            problems = ["Invalid routing key"]
        return 400, problems

    def accept(self, req: Incoming) -> Answer:
        body = req.json()
        key = body.get("dedup_key") or new_token(32)
        action = body["event_action"]
        if action == "trigger":
            self._open(key)
        elif action == "resolve" and key in self._incidents:
            self._resolve(key)
        return json_answer(202, {"status": "success", "message": "Event processed", "dedup_key": key})

    def refuse(self, status: int, problems: List[str]) -> Answer:
        if status == 413:
            return json_answer(413, {"status": "invalid event", "message": "Request entity too large"})
        return json_answer(status, {"status": "invalid event", "message": "Event object is invalid", "errors": problems})

    def scripted(self, status: int, retry_after: Any) -> Answer:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        if status == 429:
            return json_answer(429, {"status": "throttle event", "message": "Requests for this service are arriving too quickly."}, headers)
        return json_answer(status, {"status": "error", "message": "internal error"}, headers)
