"""Arbitrary alert events through every formatter: the platform's strict receiver accepts the body.

Events are generated as Kapacitor would post them (JSON bytes) and go through
``bridge.event.parse``, exactly as in the bridge, so the ``raw`` copy that the
forwarding targets (``grafana-oncall``, ``webhook``) send is part of the test.
Bodies carry what real telemetry can: control, byte-order and
line-separator characters, tags by the hundred, nested field values, texts of
hundreds of kilobytes, times from year 1 to 9999, any duration, any level
transition. Every rendered request must pass the strict validator of its
platform (``tests/receivers``): a body the platform documents as invalid is a
4xx there, which the bridge must treat as permanent, which loses the alert.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
from datetime import datetime
from typing import Any, Callable, Dict

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridge.config import from_mapping
from bridge.event import LEVELS, AlertEvent, EventError, parse
from bridge.smtp import build_message
from bridge.targets.base import EmailMessage, HttpRequest
from tests.receivers import RECEIVERS, Incoming, validate_email

FUZZ = settings(
    max_examples=int(os.environ.get("RELIABILITY_FORMATTER_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# Lone surrogates are left out: parse() refuses them (tests/reliability/test_event_fuzz.py).
_NASTY = ["\x00", "\x1b", "\u2028", "\u2029", "\ufeff", "😀", "é", '"', "\\", "\n", "\r", "\t", "<", "&", "%", "/", "{{", "${x}"]
_char = st.one_of(st.characters(), st.sampled_from(_NASTY))
small_text = st.lists(_char, max_size=30).map("".join)


@st.composite
def texts(draw: Callable, huge: int = 200_000) -> str:
    """Mostly short, sometimes one character repeated up to ``huge`` times, with a nasty tail."""
    if draw(st.integers(0, 7)) == 0:
        return draw(_char) * draw(st.integers(1000, huge)) + draw(small_text)
    return draw(small_text)


field_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False), small_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(small_text, inner, max_size=3)),
    max_leaves=6,
)


def _rfc3339(t: datetime, frac: int) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac:09d}" if frac else "") + "Z"


@st.composite
def kapacitor_bodies(draw: Callable) -> bytes:
    """A Kapacitor alert POST body, adversarial but valid for ``parse``."""
    when = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)))
    time_text = _rfc3339(when, draw(st.sampled_from([0, 0, 1, 999_999_999])))
    columns = ["time"] + draw(st.lists(small_text, max_size=5))
    tags = draw(st.dictionaries(small_text, texts(huge=5000), max_size=draw(st.sampled_from([3, 3, 200]))))
    series: Dict[str, Any] = {"columns": columns, "values": [[time_text] + [draw(field_values) for _ in columns[1:]]]}
    if draw(st.booleans()):
        series["name"] = draw(texts(huge=3000))
    if tags or draw(st.booleans()):
        series["tags"] = tags
    ident = draw(st.one_of(small_text, texts(huge=4096)))
    assume(ident.strip() and len(ident) <= 4096)
    level = draw(st.sampled_from(LEVELS))
    obj = {
        "id": ident,
        "message": draw(texts()),
        "details": draw(texts()),
        "time": time_text,
        "duration": draw(st.one_of(st.integers(0, 10**14), st.integers(-(2**63), 2**63 - 1))),
        "level": level,
        "data": draw(st.sampled_from([{"series": [series]}, {}, {"series": []}, {"series": [series, series]}])),
        "previousLevel": draw(st.sampled_from(LEVELS)),
        "recoverable": draw(st.booleans()),
    }
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


def _event(body: bytes) -> AlertEvent:
    try:
        return parse(body)
    except EventError:
        assume(False)
        raise


def _target(type_name: str) -> Any:
    """The target built from the config table of that platform's receiver (never started)."""
    receiver = RECEIVERS[type_name]()
    table = receiver.target_table()
    if type_name == "email":
        table["smtp_port"] = 2525
    config = from_mapping({"target": [{"name": "t", **table}]})
    return receiver, config.targets["t"].target


HTTP_TYPES = sorted(t for t in RECEIVERS if t != "email")


class TestFormatters:
    """Every target type renders every event into a body its platform accepts."""

    @pytest.mark.parametrize("type_name", HTTP_TYPES)
    @FUZZ
    @given(body=kapacitor_bodies())
    def test_http_targets(self, type_name: str, body: bytes) -> None:
        """The strict receiver of the platform finds no problem in the rendered request."""
        receiver, target = _target(type_name)
        event = _event(body)
        request = target.render(event)
        assert isinstance(request, HttpRequest)
        problems = receiver.problems(Incoming.from_request(request))
        assert problems == [], f"{type_name} rejects the body ({len(request.body)} bytes): {problems[:5]}"

    @FUZZ
    @given(body=kapacitor_bodies())
    def test_email(self, body: bytes) -> None:
        """The e-mail is a valid RFC 5322 message a strict MTA and OnCall's inbound mail accept."""
        _receiver, target = _target("email")
        event = _event(body)
        message = target.render(event)
        assert isinstance(message, EmailMessage)
        mime = build_message(message, target)
        raw = mime.as_bytes(policy=email.policy.SMTP)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        problems = validate_email(parsed, raw, target.from_addr, tuple(target.to))
        assert problems == [], problems[:5]

    @pytest.mark.parametrize("type_name", HTTP_TYPES)
    def test_worst_case_by_hand(self, type_name: str) -> None:
        """Control and separator characters everywhere, year 1, a 600 kB message, 300 tags."""
        nasty = "\x00\u2028\u2029\ufeff\x1b\"\\😀"
        body = json.dumps(
            {
                "id": "cpu:host=" + nasty,
                "message": ("m" + nasty) * 60_000,
                "details": nasty * 1000,
                "time": "0001-01-01T00:00:00Z",
                "duration": -(2**63),
                "level": "OK",
                "data": {
                    "series": [
                        {
                            "name": nasty,
                            "tags": {f"{nasty}{i}": nasty * 50 for i in range(300)},
                            "columns": ["time", "v", nasty],
                            "values": [["x", None, {"deep": [nasty] * 50}]],
                        }
                    ]
                },
                "previousLevel": "CRITICAL",
                "recoverable": False,
            }
        ).encode()
        receiver, target = _target(type_name)
        request = target.render(parse(body))
        assert receiver.problems(Incoming.from_request(request)) == []
