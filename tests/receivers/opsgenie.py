"""Opsgenie Alert API v2: create (``POST /v2/alerts``) and close by alias, strictly.

Limits from docs.opsgenie.com: ``message`` required, ≤ 130 characters; ``alias``
≤ 512; ``description`` ≤ 15000; ``entity`` ≤ 512; ``source``/``user`` ≤ 100; ``note``
≤ 25000; ``tags`` ≤ 20 × 50; ``details`` a flat string map ≤ 8000 characters in
total; ``priority`` P1–P5. ``Authorization: GenieKey <key>``. Close without
``identifierType=alias`` is answered 202 and does nothing (codecentric/spring-boot-admin#4551):
this receiver records such a close as a problem instead, so the bug cannot hide.
Answers 202 ``{"result":"Request will be processed","took":..,"requestId":..}``;
422 for semantic errors, 401 for a missing or wrong key.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Tuple

from ._base import Answer, Incoming, Receiver, check_unknown, decode, json_answer, new_token

__all__ = ["OpsgenieReceiver", "validate_opsgenie_close", "validate_opsgenie_create"]

PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
CREATE_KEYS = (
    "message", "alias", "description", "responders", "visibleTo", "actions", "tags",
    "details", "entity", "source", "priority", "user", "note",
)
CLOSE_KEYS = ("user", "source", "note")
LIMITS = {"message": 130, "alias": 512, "description": 15000, "entity": 512, "source": 100, "user": 100, "note": 25000}


def _limits(body: Dict[str, Any], names: Any) -> List[str]:
    problems = []
    for name in names:
        if name in body:
            value = body[name]
            if not isinstance(value, str):
                problems.append(f"{name} must be a string")
            elif len(value) > LIMITS[name]:
                problems.append(f"{name} can be at most {LIMITS[name]} characters")
    return problems


def validate_opsgenie_create(body: Any) -> List[str]:
    """Problems Opsgenie would answer 422 (or ignore silently) for a create-alert body."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems = check_unknown(body, "", CREATE_KEYS)
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        problems.append("message is required")
    problems += _limits(body, ("message", "alias", "description", "entity", "source", "user", "note"))
    if "priority" in body and body["priority"] not in PRIORITIES:
        problems.append(f"priority must be one of {', '.join(PRIORITIES)}")
    if "tags" in body:
        tags = body["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            problems.append("tags must be a list of strings")
        else:
            if len(tags) > 20:
                problems.append("at most 20 tags")
            problems += [f"tag {t!r} is longer than 50 characters" for t in tags if len(t) > 50]
    if "details" in body:
        details = body["details"]
        if not isinstance(details, dict):
            problems.append("details must be an object")
        else:
            bad = [k for k, v in details.items() if not isinstance(v, str)]
            problems += [f"details.{k} must be a string (nested values are refused)" for k in bad]
            total = sum(len(k) + (len(v) if isinstance(v, str) else 0) for k, v in details.items())
            if total > 8000:
                problems.append(f"details can be at most 8000 characters in total, got {total}")
    for name in ("responders", "visibleTo", "actions"):
        if name in body and not isinstance(body[name], list):
            problems.append(f"{name} must be a list")
    return problems


def validate_opsgenie_close(body: Any) -> List[str]:
    """Problems in a close-alert body (all fields optional)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    return check_unknown(body, "", CLOSE_KEYS) + _limits(body, CLOSE_KEYS)


class OpsgenieReceiver(Receiver):
    """Open alerts by alias; a close by alias resolves the open one."""

    type_name = "opsgenie"

    def __init__(self, api_key: str = "") -> None:
        super().__init__()
        self.api_key = api_key or str(uuid.uuid4())

    def target_table(self) -> Dict[str, Any]:
        return {"type": self.type_name, "url": self.url, "api_key": self.api_key}

    def _route(self, req: Incoming) -> Tuple[str, str]:
        """``("create", "")``, ``("close", alias)`` or ``("", why)``."""
        if req.method != "POST":
            return "", f"method {req.method} not allowed"
        if req.path == "/v2/alerts":
            return "create", ""
        parts = req.segments
        if len(parts) == 5 and parts[:3] == ["", "v2", "alerts"] and parts[4] == "close" and parts[3]:
            return "close", parts[3]
        return "", f"no such endpoint: {req.path}"

    def inspect(self, req: Incoming) -> Tuple[int, List[str]]:
        kind, detail = self._route(req)
        if not kind:
            return 404, [detail]
        auth = req.headers.get("authorization", "")
        if not auth.startswith("GenieKey "):
            return 401, ["Authorization header must be 'GenieKey <key>'"]
        if auth[len("GenieKey "):] != self.api_key:
            return 401, ["Key format is not valid!" if len(auth) < 20 else "Could not authenticate"]
        if req.content_type != "application/json":
            return 415, [f"Content-Type must be application/json, not {req.content_type or 'missing'}"]
        body, problems = decode(req)
        if problems:
            return 400, problems
        if kind == "create":
            return 422, validate_opsgenie_create(body)
        problems = validate_opsgenie_close(body)
        if req.query.get("identifierType") != ["alias"]:
            problems.append("close without identifierType=alias looks the alias up as an alert id and does nothing")
        if len(detail) > 512:
            problems.append("alias in the path is longer than 512 characters")
        return 422, problems

    def accept(self, req: Incoming) -> Answer:
        kind, alias = self._route(req)
        if kind == "create":
            body = req.json()
            alias = body.get("alias") or body["message"]
            self._open(alias)
        elif alias in self._incidents:
            self._resolve(alias)
        return json_answer(202, {"result": "Request will be processed", "took": 0.01, "requestId": new_token(32)})

    def refuse(self, status: int, problems: List[str]) -> Answer:
        body: Dict[str, Any] = {"message": problems[0], "took": 0.0, "requestId": new_token(32)}
        if status == 422:
            body = {
                "message": "Request body is not processable. Please check the errors.",
                "errors": {str(i): p for i, p in enumerate(problems)},
                "took": 0.0,
                "requestId": new_token(32),
            }
        return json_answer(status, body)
