"""The strict receivers themselves: scripted failures, rejections, the common API."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.receivers import (
    RECEIVERS,
    PagerDutyReceiver,
    SquadcastReceiver,
    validate_alertmanager_alerts,
    validate_pagerduty,
    validate_splunk_oncall,
    validate_squadcast,
)

from .helpers import build, event, send


class TestCommonApi:
    @pytest.mark.parametrize("type_name", sorted(RECEIVERS))
    def test_every_type_has_a_receiver(self, type_name):
        """Each target type maps to a receiver with the common surface."""
        rx = RECEIVERS[type_name]()
        for attr in ("start", "stop", "url", "requests", "rejected", "incidents", "fail_next", "target_table"):
            assert hasattr(rx, attr)
        assert rx.target_table()["type"] == type_name

    def test_registry_covers_all_target_types(self):
        """No registered target type lacks a receiver."""
        from bridge.targets import registered_types

        assert set(registered_types()) <= set(RECEIVERS)


class TestScriptedFailures:
    def test_fail_next_then_recover(self):
        """Two scripted 503s with Retry-After, then the platform answers normally."""
        with PagerDutyReceiver() as rx:
            rx.fail_next(503, 2, retry_after=7)
            request = build("pagerduty", rx.target_table()).render(event())
            first, second, third = send(request), send(request), send(request)
            assert (first.status_code, second.status_code, third.status_code) == (503, 503, 202)
            assert first.headers["Retry-After"] == "7"
            assert len(rx.failed) == 2 and len(rx.requests) == 1

    def test_throttle_body(self):
        """A scripted 429 looks like PagerDuty's throttle answer."""
        with PagerDutyReceiver() as rx:
            rx.fail_next(429)
            answer = send(build("pagerduty", rx.target_table()).render(event()))
            assert answer.status_code == 429 and answer.json()["status"] == "throttle event"

    def test_stall_next(self):
        """A stalled request answers only after the delay (client timeouts)."""
        with SquadcastReceiver() as rx:
            rx.stall_next(1.0)
            request = build("squadcast", rx.target_table()).render(event())
            with pytest.raises(requests.Timeout):
                send(request, timeout=0.2)
            started = time.monotonic()
            assert send(request).status_code == 202
            assert time.monotonic() - started < 1.0


class TestStrictness:
    def test_wrong_content_type(self):
        """A JSON body without ``Content-Type: application/json`` is refused."""
        with PagerDutyReceiver() as rx:
            request = build("pagerduty", rx.target_table()).render(event())
            plain = type(request)(request.method, request.url, {"Content-Type": "text/plain"}, request.body)
            assert send(plain).status_code == 400
            assert "Content-Type" in rx.rejected[0][0]

    def test_unknown_fields(self):
        """Typos in field names are caught, not silently ignored."""
        assert validate_pagerduty({"routing_key": "0" * 32, "event_action": "resolve", "dedupkey": "x"})
        assert validate_squadcast({"status": "resolve", "event_id": "x", "evnt": 1})
        assert validate_alertmanager_alerts([{"labels": {"a": "b"}, "endAt": "2025-01-01T00:00:00Z"}])

    def test_splunk_ok_refused(self):
        """``OK`` is not a Splunk On-Call message type (it must be RECOVERY)."""
        assert validate_splunk_oncall({"message_type": "OK", "entity_id": "x"})

    def test_non_json_body(self):
        """Invalid JSON and NaN are refused."""
        with PagerDutyReceiver() as rx:
            request = build("pagerduty", rx.target_table()).render(event())
            for raw in (b"{", json.dumps({"x": float("nan")}).encode()):
                bad = type(request)(request.method, request.url, request.headers, raw)
                assert send(bad).status_code == 400
