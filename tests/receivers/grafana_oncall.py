"""Grafana OnCall inbound integrations: Kapacitor, Formatted Webhook, Alertmanager.

Transport (grafana/oncall ``engine/apps/integrations``): ``POST
<oncall>/integrations/v1/<slug>/<token>/`` with the trailing slash, JSON body, no
auth header; 200 ``"Ok."``; 403 for an unknown token; 400 for a slug that does
not match the token's integration or an unparsable body. ``<url>heartbeat/``
answers GET 200 ``":)"`` and POST 200 for integrations with heartbeats
(not ``kapacitor``). Grouping and resolve follow each integration's default
templates (``engine/config_integrations/*.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Tuple

from ._base import Answer, Incoming, Receiver, check_string_map, check_strings, decode, is_rfc3339, json_answer, new_token, parse_rfc3339

__all__ = [
    "OnCallAlertmanagerReceiver",
    "OnCallFormattedWebhookReceiver",
    "OnCallKapacitorReceiver",
    "validate_alertmanager_webhook",
    "validate_kapacitor_event",
    "validate_oncall_formatted_webhook",
]

LEVELS = ("OK", "INFO", "WARNING", "CRITICAL")
FORMATTED_FIELDS = ("alert_uid", "title", "image_url", "state", "link_to_upstream_details", "message")


def validate_kapacitor_event(body: Any) -> List[str]:
    """Kapacitor's ``alert.Data`` JSON, every field present (no ``omitempty`` in Go)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems = []
    for name in ("id", "message", "details", "time", "level", "previousLevel"):
        if not isinstance(body.get(name), str):
            problems.append(f"{name} must be a string")
    if isinstance(body.get("id"), str) and not body["id"]:
        problems.append("id must not be empty")
    if body.get("level") not in LEVELS:
        problems.append(f"level must be one of {', '.join(LEVELS)}")
    if "time" in body and not is_rfc3339(body["time"]):
        problems.append("time must be RFC 3339")
    duration = body.get("duration")
    if not isinstance(duration, int) or isinstance(duration, bool):
        problems.append("duration must be an integer (nanoseconds)")
    if not isinstance(body.get("data"), dict):
        problems.append("data must be an object")
    if not isinstance(body.get("recoverable", True), bool):
        problems.append("recoverable must be a boolean")
    return problems


def validate_oncall_formatted_webhook(body: Any) -> List[str]:
    """All fields optional strings; ``alert_uid`` is what groups, so it is required here."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems = check_strings(body, "", FORMATTED_FIELDS)
    if not isinstance(body.get("alert_uid"), str) or not body.get("alert_uid"):
        problems.append("alert_uid missing: every payload would open its own alert group")
    if "state" in body and isinstance(body["state"], str) and body["state"].lower() not in ("alerting", "ok"):
        problems.append("state must be 'alerting' or 'ok'")
    if not isinstance(body.get("title"), str) or not body.get("title"):
        problems.append("title missing: OnCall renders 'Title undefined' (and a resolve would blank the group title)")
    return problems


def validate_alertmanager_webhook(body: Any) -> List[str]:
    """Alertmanager's webhook ``Message`` (version 4), as ``notify/webhook`` sends it."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems = []
    if body.get("version") != "4":
        problems.append("version must be \"4\"")
    for name in ("groupKey", "receiver", "externalURL"):
        if not isinstance(body.get(name), str):
            problems.append(f"{name} must be a string")
    if isinstance(body.get("groupKey"), str) and not body["groupKey"]:
        problems.append("groupKey must not be empty")
    truncated = body.get("truncatedAlerts")
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        problems.append("truncatedAlerts must be a non-negative integer")
    status = body.get("status")
    if status not in ("firing", "resolved"):
        problems.append("status must be 'firing' or 'resolved'")
    for name in ("groupLabels", "commonLabels", "commonAnnotations"):
        problems += check_string_map(body.get(name), name)
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        return problems + ["alerts must be a non-empty list"]
    for i, alert in enumerate(alerts):
        problems += _webhook_alert(alert, f"alerts[{i}]")
    statuses = {a.get("status") for a in alerts if isinstance(a, dict)}
    if status == "resolved" and statuses != {"resolved"}:
        problems.append("status is resolved while some alerts still fire")
    if status == "firing" and "firing" not in statuses:
        problems.append("status is firing but no alert fires")
    return problems


def _webhook_alert(alert: Any, where: str) -> List[str]:
    if not isinstance(alert, dict):
        return [f"{where} must be an object"]
    problems = []
    if alert.get("status") not in ("firing", "resolved"):
        problems.append(f"{where}.status must be 'firing' or 'resolved'")
    problems += check_string_map(alert.get("labels"), f"{where}.labels")
    problems += check_string_map(alert.get("annotations"), f"{where}.annotations")
    for name in ("startsAt", "endsAt"):
        if not is_rfc3339(alert.get(name)):
            problems.append(f"{where}.{name} must be RFC 3339")
    for name in ("generatorURL", "fingerprint"):
        if not isinstance(alert.get(name), str):
            problems.append(f"{where}.{name} must be a string")
    if isinstance(alert.get("fingerprint"), str) and not alert["fingerprint"]:
        problems.append(f"{where}.fingerprint must not be empty")
    zero = alert.get("endsAt") == "0001-01-01T00:00:00Z"
    if alert.get("status") == "firing" and not zero:
        problems.append(f"{where}.endsAt must be 0001-01-01T00:00:00Z while firing")
    if alert.get("status") == "resolved" and zero:
        problems.append(f"{where}.endsAt must be set when resolved")
    starts, ends = parse_rfc3339(alert.get("startsAt")), parse_rfc3339(alert.get("endsAt"))
    if not zero and starts is not None and ends is not None and ends < starts:
        problems.append(f"{where}.endsAt is before startsAt")
    return problems


class _OnCallReceiver(Receiver):
    """One OnCall integration: token in the path, grouping per the slug's template."""

    slug: ClassVar[str]
    has_heartbeat: ClassVar[bool] = True

    def __init__(self, token: str = "") -> None:
        super().__init__()
        self.token = token or new_token(25)
        self.heartbeats = 0

    @property
    def url(self) -> str:
        return f"{self.base_url}/integrations/v1/{self.slug}/{self.token}/"

    @property
    def heartbeat_url(self) -> str:
        return self.url + "heartbeat/"

    def inspect(self, req: Incoming) -> Tuple[int, List[str]]:
        parts = req.path.split("/")
        if len(parts) < 6 or parts[:3] != ["", "integrations", "v1"]:
            return 404, [f"no such endpoint: {req.path}"]
        if not req.path.endswith("/"):
            return 404, ["URL must end with '/' (APPEND_SLASH is off)"]
        if parts[4] != self.token:
            return 403, ["Integration key was not found. Permission denied."]
        if parts[3] != self.slug:
            return 400, [f"integration is {self.slug!r}, not {parts[3]!r}"]
        if parts[5:] == ["heartbeat", ""]:
            if not self.has_heartbeat:
                return 404, ["this integration has no heartbeat endpoint"]
            return (405, [f"method {req.method} not allowed"]) if req.method not in ("GET", "POST") else (200, [])
        if parts[5:] != [""]:
            return 404, [f"no such endpoint: {req.path}"]
        if req.method != "POST":
            return 405, [f"method {req.method} not allowed"]
        if req.content_type != "application/json":
            return 400, [f"Content-Type must be application/json, not {req.content_type or 'missing'}"]
        body, problems = decode(req)
        return 400, problems or self.validate(body)

    def validate(self, body: Any) -> List[str]:
        raise NotImplementedError

    def accept(self, req: Incoming) -> Answer:
        if req.path.endswith("/heartbeat/"):
            self.heartbeats += 1
            return json_answer(200, ":)") if req.method == "GET" else Answer(200)
        key, resolve = self.group(req.json())
        if resolve:
            if key in self._incidents:
                self._resolve(key)
        else:
            self._open(key)
        return json_answer(200, "Ok.")

    def group(self, body: Any) -> Tuple[str, bool]:
        """``(grouping_id, resolve_condition)`` as the integration's template renders them."""
        raise NotImplementedError

    def refuse(self, status: int, problems: List[str]) -> Answer:
        return json_answer(status, {"detail": "; ".join(problems)})

    def target_table(self) -> Dict[str, Any]:
        return {"type": self.type_name, "url": self.url}


class OnCallKapacitorReceiver(_OnCallReceiver):
    """``grouping_id = payload.id``; resolve when ``level`` starts with ``OK``."""

    type_name = "grafana-oncall"
    slug = "kapacitor"
    has_heartbeat = False

    def validate(self, body: Any) -> List[str]:
        return validate_kapacitor_event(body)

    def group(self, body: Any) -> Tuple[str, bool]:
        return body["id"], body["level"].startswith("OK")


class OnCallFormattedWebhookReceiver(_OnCallReceiver):
    """``grouping_id = payload.alert_uid``; resolve when ``state.upper() == "OK"``."""

    type_name = "grafana-oncall-webhook"
    slug = "formatted_webhook"

    def validate(self, body: Any) -> List[str]:
        return validate_oncall_formatted_webhook(body)

    def group(self, body: Any) -> Tuple[str, bool]:
        return body.get("alert_uid", ""), str(body.get("state", "")).upper() == "OK"


class OnCallAlertmanagerReceiver(_OnCallReceiver):
    """``grouping_id = payload.groupKey``; resolve when ``status == "resolved"``."""

    type_name = "alertmanager-webhook"
    slug = "alertmanager"

    def validate(self, body: Any) -> List[str]:
        return validate_alertmanager_webhook(body)

    def group(self, body: Any) -> Tuple[str, bool]:
        # OnCall groups on groupKey; the bridge's groupKey ({}:{alertname=…, kapacitor_id=…})
        # maps one-to-one to the Kapacitor id, so incidents are listed by that id.
        return body.get("groupLabels", {}).get("kapacitor_id") or body["groupKey"], body["status"] == "resolved"
