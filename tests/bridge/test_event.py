"""Kapacitor alert events: what parse accepts, and what it refuses by field name."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Dict

import pytest

from bridge.event import AlertEvent, EventError, format_time, parse

GOOD: Dict[str, Any] = {
    "id": "cpu:host=a",
    "message": "cpu:host=a is CRITICAL",
    "details": "",
    "time": "2024-05-01T12:00:00.123456789Z",
    "duration": 60000000000,
    "level": "CRITICAL",
    "data": {"series": [{"name": "cpu", "tags": {"host": "a"}, "columns": ["time", "usage_user"],
                         "values": [["2024-05-01T12:00:00Z", 97.5]]}]},
    "previousLevel": "WARNING",
    "recoverable": True,
}


def body(**changes: Any) -> bytes:
    event = {**GOOD, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not _DROP}).encode()


_DROP = object()


class TestParse:
    def test_kapacitor_event(self) -> None:
        """Kapacitor's JSON becomes a frozen event with series, tags and fields at hand."""
        ev = parse(body())
        assert ev.id == "cpu:host=a" and ev.level == "CRITICAL" and ev.previous_level == "WARNING"
        assert ev.time == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
        assert ev.duration_ns == 60_000_000_000 and ev.recoverable
        assert ev.series_name == "cpu" and ev.tags == {"host": "a"} and ev.fields == {"usage_user": 97.5}
        assert not ev.is_recovery and parse(body(level="OK")).is_recovery

    def test_original_json_forwarded(self) -> None:
        """to_json gives back what Kapacitor sent, for targets that forward it as is."""
        assert json.loads(parse(body()).to_json()) == GOOD

    def test_optional_fields_default(self) -> None:
        """Only id, level and time are required."""
        ev = parse(json.dumps({"id": "x", "level": "OK", "time": "2024-05-01T12:00:00+02:00"}).encode())
        assert ev.previous_level == "OK" and ev.data == {} and ev.time.hour == 10

    @pytest.mark.parametrize(
        "raw, field",
        [
            (b"\xff", "body"),
            (b"{", "body"),
            (b"[]", "body"),
            (body(id=_DROP), "id"),
            (body(id=""), "id"),
            (body(id=7), "id"),
            (body(level="FATAL"), "level"),
            (body(level=["OK"]), "level"),
            (body(time="yesterday"), "time"),
            (body(time=_DROP), "time"),
            (body(previousLevel="BAD"), "previousLevel"),
            (body(previousLevel=""), "previousLevel"),
            (body(duration="1m"), "duration"),
            (body(data=[]), "data"),
            (body(recoverable="yes"), "recoverable"),
            (b'{"id":"x","level":"OK","time":"2024-05-01T12:00:00Z","message":NaN}', "body"),
        ],
    )
    def test_bad_input_names_the_field(self, raw: bytes, field: str) -> None:
        """Each malformed body raises EventError naming what is wrong."""
        with pytest.raises(EventError) as info:
            parse(raw)
        assert info.value.field == field


class TestFormatTime:
    def test_four_digit_years(self) -> None:
        """Years before 1000 are zero-padded, as RFC 3339 requires."""
        assert format_time(datetime(999, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == "0999-01-02T03:04:05Z"

    def test_fraction_only_when_present(self) -> None:
        """Microseconds appear only when non-zero, trailing zeros trimmed."""
        t = datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=timezone.utc)
        assert format_time(t) == "2024-05-01T12:00:00.5Z"
        assert format_time(t.replace(microsecond=0)) == "2024-05-01T12:00:00Z"

    def test_event_without_raw_serializes(self) -> None:
        """An event built in code (send-test, auto-resolve) serializes to Kapacitor's shape."""
        ev = AlertEvent(id="x", level="OK", time=datetime(2024, 1, 1, tzinfo=timezone.utc))
        assert json.loads(ev.to_json())["time"] == "2024-01-01T00:00:00Z"
