"""The ``alertmanager-webhook`` body field by field against what a real Alertmanager sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from bridge.event import parse
from bridge.targets.base import Options, get_type
from tests.alertmanager.peer import Alertmanager
from tests.bridge.harness import Receiver, kapacitor_event, wait_until

ID = "cpu:host=web-01"
COMPARED = ("status", "notification_reason", "groupLabels", "commonLabels", "commonAnnotations", "routeLabels",
            "externalURL", "version", "groupKey", "truncatedAlerts", "receiver")


def ours(am: Alertmanager, event: Dict[str, Any], told: Any = None) -> Dict[str, Any]:
    target = get_type("alertmanager-webhook").from_options(
        "w", Options("target.w", {"url": "http://127.0.0.1:9/", "receiver": "capture", "external_url": am.url})
    )
    return json.loads(target.render_told(parse(json.dumps(event).encode()), told).body)


def posted(am: Alertmanager, event: Dict[str, Any], told: Any = None) -> None:
    am_target = get_type("alertmanager").from_options("a", Options("target.a", {"url": am.url}))
    answer = am.post(json.loads(am_target.render_told(parse(json.dumps(event).encode()), told).body))
    assert answer.status_code == 200, answer.text


def captured(webhook: Receiver, status: str) -> Dict[str, Any]:
    def find() -> List[Dict[str, Any]]:
        return [r.json() for r in webhook.requests if r.path == "/hook" and r.json()["status"] == status]

    return wait_until(find, timeout=15, message=f"no {status} notification")[-1]


class Told:
    def __init__(self, level: str, body: bytes) -> None:
        self.level, self.fired_levels, self.body = level, (level,), body


def test_firing_and_resolved_match(alertmanager: Alertmanager, webhook: Receiver, tmp_path: Path) -> None:
    """Keys, their order, groupKey, labels, fingerprints and reasons equal Alertmanager's own body."""
    fire = kapacitor_event(ID, "CRITICAL", tags={"host": "web-01", "cpu": "cpu-total"})
    posted(alertmanager, fire)
    real = captured(webhook, "firing")
    mine = ours(alertmanager, fire)
    assert list(mine) == list(real)
    for key in COMPARED:
        assert mine[key] == real[key], key
    [real_alert], [my_alert] = real["alerts"], mine["alerts"]
    assert list(my_alert) == list(real_alert)
    for key in ("status", "labels", "annotations", "fingerprint", "endsAt", "generatorURL"):
        assert my_alert[key] == real_alert[key], key

    told = Told("CRITICAL", json.dumps(fire).encode())
    ok = kapacitor_event(ID, "OK", previous_level="CRITICAL", tags={"host": "web-01", "cpu": "cpu-total"})
    posted(alertmanager, ok, told)
    real = captured(webhook, "resolved")
    mine = ours(alertmanager, ok, told)
    for key in COMPARED:
        assert mine[key] == real[key], key
    assert [a["fingerprint"] for a in mine["alerts"]] == [a["fingerprint"] for a in real["alerts"]]
    assert [a["labels"] for a in mine["alerts"]] == [a["labels"] for a in real["alerts"]]
