"""The rejection log's budget: per status, a burst per window, and a count of what was left out."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from aiohttp.test_utils import make_mocked_request
from structlog.testing import capture_logs

from bridge.rejections import RejectionLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(logged: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [e for e in logged if e["event"] == "request.rejected"]


class TestBudget:
    def test_burst_then_count(self) -> None:
        """After the burst a status is only counted; the first line of the next window says how many."""
        clock = Clock()
        rejections = RejectionLog(burst=3, window=60.0, clock=clock)
        request = make_mocked_request("POST", "/alerts/x")
        with capture_logs() as logged:
            written = [rejections.record(request, 404, "unknown target 'x'", "x") for _ in range(10)]
            assert written == [True] * 3 + [False] * 7
            assert rejections.record(request, 401, "missing or wrong bearer token", "x")  # own budget
            clock.now += 60.0
            assert rejections.record(request, 404, "unknown target 'x'", "x")
        found = lines(logged)
        assert [e["status"] for e in found] == [404, 404, 404, 401, 404]
        assert "not_logged_since_last" not in found[0]
        assert found[-1]["not_logged_since_last"] == 7

    @pytest.mark.parametrize("length", [10, 500])
    def test_client_text_clipped(self, length: int) -> None:
        """Target names and paths come from the client and are cut at 64 characters."""
        name = "t" * length
        request = make_mocked_request("POST", f"/alerts/{name}")
        with capture_logs() as logged:
            RejectionLog().record(request, 404, "unknown target", name)
        [entry] = lines(logged)
        assert len(entry["target"]) <= 65 and len(entry["path"]) <= 65
