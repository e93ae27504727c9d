"""Alertmanager API v2 ``POST /api/v2/alerts``, strictly (``api/v2/openapi.yaml``, ``alert/alert.go``).

Body: a JSON array of ``postableAlert`` (``labels`` required, ``annotations``,
``startsAt``/``endsAt`` date-time, ``generatorURL`` uri). Alertmanager drops empty
label values, then requires at least one label, valid label names (classic
``[a-zA-Z_][a-zA-Z0-9_]*``), valid annotation names, a start time and
``endsAt`` not before ``startsAt``. Answers 200 (empty) or 400 with the error
text as a JSON string. Alerts are identified by their label set; one is resolved
when its ``endsAt`` is not after the time it arrives (a future ``endsAt`` keeps it
firing, as Prometheus sends it); ``incidents`` reports per ``kapacitor_id`` label:
open while any of its label sets fires.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Dict, List, Tuple
from urllib.parse import urlsplit

from ._base import Answer, Incoming, Receiver, check_unknown, decode, json_answer, parse_rfc3339

__all__ = ["AlertmanagerReceiver", "validate_alertmanager_alerts"]

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ALERT_KEYS = ("labels", "annotations", "startsAt", "endsAt", "generatorURL")
PATH = "/api/v2/alerts"
ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)


def _label_set(value: Any, where: str, need_one: bool) -> List[str]:
    if not isinstance(value, dict):
        return [f"{where} must be an object of strings"]
    problems = []
    for name, text in value.items():
        if not LABEL_NAME.match(name):
            problems.append(f"{where}: invalid name {name!r}")
        if not isinstance(text, str):
            problems.append(f"{where}: value of {name!r} must be a string")
    if need_one and not any(isinstance(v, str) and v for v in value.values()):
        problems.append(f"{where}: at least one label pair required")
    return problems


def validate_alertmanager_alerts(body: Any) -> List[str]:
    """Problems Alertmanager would answer 400 for (empty: every alert valid)."""
    if not isinstance(body, list):
        return ["body must be a JSON array of alerts"]
    problems = []
    for i, alert in enumerate(body):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            problems.append(f"{where} must be an object")
            continue
        problems += check_unknown(alert, f"{where}.", ALERT_KEYS)
        if "labels" not in alert:
            problems.append(f"{where}.labels is required")
        else:
            problems += _label_set(alert["labels"], f"{where}.labels", need_one=True)
        if "annotations" in alert:
            problems += _label_set(alert["annotations"], f"{where}.annotations", need_one=False)
        starts = ends = None
        for name in ("startsAt", "endsAt"):
            if name in alert:
                parsed = parse_rfc3339(alert[name])
                if parsed is None:
                    problems.append(f"{where}.{name} must be an RFC 3339 date-time")
                elif parsed == ZERO_TIME:
                    problems.append(f"{where}.{name} is Go's zero time, which Alertmanager reads as unset")
                starts, ends = (parsed, ends) if name == "startsAt" else (starts, parsed)
        if starts is not None and ends is not None and ends < starts:
            problems.append(f"{where}: start time must be before end time")
        if "generatorURL" in alert:
            url = alert["generatorURL"]
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or not parts.scheme or not parts.netloc:
                problems.append(f"{where}.generatorURL must be an absolute URI")
    return problems


class AlertmanagerReceiver(Receiver):
    """Tracks every label set; ``incidents`` folds them per ``kapacitor_id``."""

    type_name = "alertmanager"

    def __init__(self) -> None:
        super().__init__()
        self.alerts: Dict[str, str] = {}

    def inspect(self, req: Incoming) -> Tuple[int, List[str]]:
        if req.method != "POST" or req.path != PATH:
            return 404, [f"no such endpoint: {req.method} {req.path}"]
        if req.content_type != "application/json":
            return 400, [f"Content-Type must be application/json, not {req.content_type or 'missing'}"]
        body, problems = decode(req)
        return 400, problems or validate_alertmanager_alerts(body)

    def accept(self, req: Incoming) -> Answer:
        arrived = datetime.now(timezone.utc)
        for alert in req.json():
            labels = {k: v for k, v in alert["labels"].items() if v}
            key = json.dumps(labels, sort_keys=True)
            ends = parse_rfc3339(alert["endsAt"]) if "endsAt" in alert else None
            self.alerts[key] = "resolved" if ends is not None and ends <= arrived else "open"
            ident = labels.get("kapacitor_id", key)
            states = [s for k, s in self.alerts.items() if json.loads(k).get("kapacitor_id", k) == ident]
            if "open" in states:
                self._open(ident)
            else:
                self._resolve(ident)
        return Answer(200)

    def refuse(self, status: int, problems: List[str]) -> Answer:
        return json_answer(status, "; ".join(problems))
