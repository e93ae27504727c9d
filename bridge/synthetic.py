"""Events the bridge makes itself: the ``send-test`` event and the auto-resolve of a quiet id."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Optional

from .event import AlertEvent, format_time, parse, parse_time

__all__ = ["SEND_TEST_ID", "synthetic_event", "synthetic_resolve"]

#: The id ``send-test`` uses, so the test incident is easy to find and close.
SEND_TEST_ID = "kapacitor-oncall-bridge:send-test"


def synthetic_event(level: str = "CRITICAL", now: Optional[float] = None) -> AlertEvent:
    """The event ``send-test`` sends: clearly labelled, with a fixed id."""
    when = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    body = {
        "id": SEND_TEST_ID,
        "message": f"{SEND_TEST_ID} is {level} (send-test from kapacitor-oncall-bridge)",
        "details": "A test event sent by `kapacitor-oncall-bridge send-test`; resolve it with --level OK.",
        "time": format_time(when),
        "duration": 0,
        "level": level,
        "data": {"series": [{"name": "kapacitor-oncall-bridge", "tags": {"test": "true"},
                             "columns": ["time", "value"], "values": [[format_time(when), 1]]}]},
        "previousLevel": "OK" if level != "OK" else "CRITICAL",
        "recoverable": True,
    }
    return parse(json.dumps(body).encode())


def synthetic_resolve(target: str, key: str, body: bytes, now: float) -> Optional[bytes]:
    """The OK event the bridge sends itself when an id went quiet (resolve_after).

    It repeats the last event's ``id`` and ``data`` (series name and tags), because
    platforms correlate on those (Alertmanager labels, OnCall grouping) and
    resolves should carry the title of what they resolve.
    """
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        obj = {}
    previous = obj.get("level") if obj.get("level") in ("INFO", "WARNING", "CRITICAL") else "CRITICAL"
    when = datetime.fromtimestamp(now, tz=timezone.utc)
    duration = 0
    try:
        duration = max(0, int((now - parse_time(obj.get("time", "")).timestamp()) * 1e9))
    except (ValueError, TypeError):
        pass
    obj.update(
        id=key,
        level="OK",
        previousLevel=previous,
        time=format_time(when),
        duration=duration,
        message=f"{key} is OK (auto-resolved by kapacitor-oncall-bridge: no new event)",
        details="",
    )
    obj.setdefault("data", {})
    obj.setdefault("recoverable", True)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
