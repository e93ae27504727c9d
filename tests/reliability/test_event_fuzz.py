"""Hostile alert bodies: ``bridge.event.parse`` raises only EventError, never anything else.

Kapacitor posts well-formed JSON, but a misconfigured ``[[httppost]]`` template, a
proxy or a curl by hand can post anything. The server turns :class:`EventError`
into a 400 naming the field; any other exception would be a 500 (Kapacitor does
not retry) or, worse, an accepted record that cannot be delivered. So: for every
body, ``parse`` either raises EventError with a field and a message, or returns an
event that is complete, in range, and survives its own re-encoding (what the
grafana-oncall and webhook targets send is ``event.to_json()``).
"""

from __future__ import annotations

import json
from datetime import timezone
from typing import Any, Callable, Dict, List, Optional

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.event import LEVELS, MAX_ID_CHARS, AlertEvent, EventError, parse
from tests.bridge.conftest import make_bridge  # noqa: F401 - the fixture, reused
from tests.bridge.harness import BridgeProcess, Receiver

FIELDS = {"body", "id", "level", "time", "message", "details", "duration", "data", "previousLevel", "recoverable"}
FUZZ = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies ------------------------------------------------------------------

_SPECIAL = ["\ud800", "\udfff", "\x00", "\u2028", "😀", '"', "\\", "\n", "é"]
texts = st.one_of(st.text(max_size=40), st.sampled_from(_SPECIAL), st.text(alphabet=st.sampled_from(_SPECIAL), max_size=8))
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=10,
)

_times = st.one_of(
    st.sampled_from(
        [
            "2025-06-02T08:15:00Z",
            "2025-06-02T08:15:00.123456789Z",
            "2025-06-02T08:15:00+02:00",
            "2025-06-02t08:15:00z",
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "9999-12-31T23:59:59.999999999Z",
            "2025-06-02T08:15:00",
            "2025-06-02 08:15:00Z",
            "2025-06-02T08:15:00.Z",
            "2025-06-02T08:15:00+24:00",
            "2025-13-02T08:15:00Z",
            "2025-02-30T08:15:00Z",
            "2025-06-02T25:15:00Z",
            "2025-06-02T08:15:00." + "9" * 60 + "Z",
            "",
        ]
    ),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.builds(
        lambda d, h, m, s: f"{d.isoformat()}{s}{h:02d}:{m:02d}",
        st.datetimes(),
        st.integers(0, 30),
        st.integers(0, 70),
        st.sampled_from(["+", "-"]),
    ),
    texts,
)


@st.composite
def valid_events(draw: Callable) -> Dict[str, Any]:
    """A body Kapacitor could send."""
    return {
        "id": draw(st.text(min_size=1, max_size=60).filter(str.strip)),
        "message": draw(st.text(max_size=60)),
        "details": draw(st.text(max_size=60)),
        "time": draw(st.sampled_from(["2025-06-02T08:15:00Z", "2025-06-02T08:15:00.5+02:00"])),
        "duration": draw(st.integers(0, 2**63 - 1)),
        "level": draw(st.sampled_from(LEVELS)),
        "data": {"series": [{"name": "cpu", "tags": {"host": "a"}, "columns": ["time", "v"], "values": [["t", 1]]}]},
        "previousLevel": draw(st.sampled_from(LEVELS)),
        "recoverable": draw(st.booleans()),
    }


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def mutated_events(draw: Callable) -> bytes:
    """A valid body with one to three things broken, encoded; sometimes the bytes broken too."""
    obj: Dict[str, Any] = draw(valid_events())
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(FIELDS - {"body"}) + ["extra"]))
        how = draw(st.integers(0, 5))
        if how == 0:
            obj.pop(key, None)
        elif how == 1:
            obj[key] = draw(json_values)
        elif how == 2:
            obj[key] = draw(st.sampled_from(["x" * (MAX_ID_CHARS + 1), "é" * 100_000, " ", "", "\ud800"]))
        elif how == 3 and key == "time":
            obj[key] = draw(_times)
        elif how == 4:
            obj[key] = None
        else:
            obj[key] = draw(st.sampled_from([True, 0, -1, 2**64, 1.5, [], {}, "OK", "CRITICAL", "ok"]))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        # Deep nesting inside data (a field any JSON value may fill).
        text = text[:-1] + ', "data": {"x": ' + _deep(draw(st.integers(50, 200_000))) + "}}"
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")  # lone surrogates as CESU bytes: invalid UTF-8
    cut = draw(st.integers(0, 9))
    if cut == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif cut == 1:
        pos = draw(st.integers(0, len(raw)))
        raw = raw[:pos] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xf4\x90\x80\x80"])) + raw[pos:]
    return raw


bodies = st.one_of(
    mutated_events(),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b'"id"',
            b"{",
            b'{"id": NaN}',
            b'{"id":"a","level":"OK","time":"2025-06-02T08:15:00Z","duration":Infinity}',
            b'{"id":"a","level":"OK","time":"2025-06-02T08:15:00Z","duration":1e400}',
            b'{"id":"a","id":"b","level":"OK","time":"2025-06-02T08:15:00Z"}',
            b"\xef\xbb\xbf{}",
            _deep(100_000).encode(),
            ('{"a":' * 50_000 + "1" + "}" * 50_000).encode(),
        ]
    ),
)


# -- the property ------------------------------------------------------------------


def check_body(body: bytes) -> Optional[AlertEvent]:
    """parse() either refuses with EventError or returns a sound, re-encodable event."""
    try:
        event = parse(body)
    except EventError as exc:
        assert exc.field in FIELDS, f"EventError names unknown field {exc.field!r}"
        assert exc.message and str(exc).startswith(exc.field)
        return None
    assert isinstance(event.id, str) and event.id.strip() and len(event.id) <= MAX_ID_CHARS
    assert event.level in LEVELS and event.previous_level in LEVELS
    assert event.time.tzinfo is not None and event.time.utcoffset() == timezone.utc.utcoffset(None)
    assert isinstance(event.message, str) and isinstance(event.details, str)
    assert isinstance(event.duration_ns, int) and not isinstance(event.duration_ns, bool)
    assert isinstance(event.recoverable, bool) and isinstance(event.data, dict)
    # What targets forward must be valid UTF-8 JSON that parses back to the same event
    # (lone surrogates may come back as U+FFFD: they have no UTF-8 form).
    again = event.to_json()
    again.decode("utf-8")
    back = parse(again)
    assert (back.level, back.time, back.previous_level, back.duration_ns, back.recoverable) == (
        event.level, event.time, event.previous_level, event.duration_ns, event.recoverable
    )
    assert [_utf8(getattr(back, k)) for k in ("id", "message", "details")] == [
        _utf8(getattr(event, k)) for k in ("id", "message", "details")
    ]
    return event


def _utf8(text: str) -> str:
    """``text`` with lone surrogates replaced, as any UTF-8 encoder must."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class TestParse:
    """bridge.event.parse against hostile bodies."""

    @FUZZ
    @given(body=bodies)
    def test_only_event_error(self, body: bytes) -> None:
        """Any body yields EventError naming a field, or a sound event."""
        check_body(body)

    @settings(max_examples=300, deadline=None)
    @given(obj=valid_events())
    def test_valid_events_accepted(self, obj: Dict[str, Any]) -> None:
        """Every body of Kapacitor's shape parses, keeping id, level and text."""
        event = check_body(json.dumps(obj).encode())
        assert event is not None
        assert (event.id, event.level, event.message) == (obj["id"], obj["level"], obj["message"])

    @settings(max_examples=300, deadline=None)
    @given(obj=valid_events(), key=st.sampled_from(["id", "level", "time"]))
    def test_missing_required_field_named(self, obj: Dict[str, Any], key: str) -> None:
        """Without id, level or time the error names exactly that field."""
        del obj[key]
        with pytest.raises(EventError) as info:
            parse(json.dumps(obj).encode())
        assert info.value.field == key

    @FUZZ
    @given(time=_times)
    def test_any_time_string(self, time: str) -> None:
        """Any time string (year 1 and 9999 with offsets included) is accepted in UTC or an EventError."""
        check_body(json.dumps({"id": "a", "level": "OK", "time": time}).encode("utf-8", "surrogatepass"))

    @pytest.mark.parametrize(
        "time",
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+00:31"],
    )
    def test_times_out_of_range_in_utc(self, time: str) -> None:
        """A time that exists locally but not in UTC (year 0 or 10000) is a 400, not a 500."""
        with pytest.raises(EventError) as info:
            parse(json.dumps({"id": "a", "level": "OK", "time": time}).encode())
        assert info.value.field == "time"

    @pytest.mark.parametrize("key", ["id", "message", "details"])
    def test_lone_surrogates_do_not_make_an_unsendable_event(self, key: str) -> None:
        """A JSON \\ud800 escape is refused (naming the field) or survives re-encoding."""
        obj = {"id": "a", "level": "CRITICAL", "time": "2025-06-02T08:15:00Z", key: "x\ud800y"}
        check_body(json.dumps(obj).encode())

    def test_deep_nesting(self) -> None:
        """100,000 nested arrays are an EventError about the body, not a RecursionError."""
        body = b'{"id":"a","level":"OK","time":"2025-06-02T08:15:00Z","data":{"x":' + _deep(100_000).encode() + b"}}"
        with pytest.raises(EventError) as info:
            parse(body)
        assert info.value.field == "body"

    def test_huge_strings(self) -> None:
        """Megabyte messages parse (the server's body cap limits them), ids over the cap do not."""
        big = {"id": "a", "level": "OK", "time": "2025-06-02T08:15:00Z", "message": "m" * 2_000_000}
        assert check_body(json.dumps(big).encode()) is not None
        with pytest.raises(EventError, match="id"):
            parse(json.dumps({**big, "id": "i" * (MAX_ID_CHARS + 1)}).encode())


#: Bodies that once broke parse() or rendering, posted in every run.
HARD_BODIES = [
    json.dumps({"id": "a", "level": [], "time": "2025-06-02T08:15:00Z"}).encode(),
    json.dumps({"id": "a", "level": "OK", "previousLevel": {}, "time": "2025-06-02T08:15:00Z"}).encode(),
    json.dumps({"id": "a", "level": "OK", "time": "0001-01-01T00:00:00+01:00"}).encode(),
    json.dumps({"id": "a", "level": "OK", "time": "9999-12-31T23:59:59-01:00"}).encode(),
    json.dumps({"id": "a\ud800", "level": "CRITICAL", "time": "2025-06-02T08:15:00Z"}).encode(),
    json.dumps({"id": "b", "level": "CRITICAL", "time": "2025-06-02T08:15:00Z", "message": "\udfff"}).encode(),
    b'{"id":"a","level":"OK","time":"2025-06-02T08:15:00Z","data":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
]


class TestHttp:
    """The same bodies against a running bridge: 4xx with a message, never 5xx, nothing bad stored."""

    def test_hostile_posts(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """Each body gets 202, 400 naming a field, or 413; every 202 is delivered and parses again."""
        platform = Receiver(default=200)
        bridge = make_bridge(
            f"""
[delivery]
repeat_interval = "0s"
backoff_initial = "50ms"
backoff_max = "200ms"

[[target]]
name = "hook"
type = "webhook"
url = "{platform.url}/hook"
"""
        )
        session = requests.Session()
        session.trust_env = False
        accepted: List[bytes] = []
        try:

            @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(body=bodies)
            def post(body: bytes) -> None:
                resp = session.post(f"{bridge.url}/alerts/hook", data=body, timeout=30)
                assert resp.status_code in (202, 400, 413), f"{resp.status_code} for {body[:200]!r}: {resp.text[:500]}"
                answer = resp.json()
                if resp.status_code == 202:
                    accepted.append(body)
                else:
                    assert answer["error"], answer
                if resp.status_code == 400:
                    assert answer.get("field") in FIELDS and answer["error"].startswith(answer["field"]), answer

            post()
            # The known hard cases, whatever hypothesis happened to draw.
            for body in HARD_BODIES:
                post.hypothesis.inner_test(body)  # type: ignore[attr-defined]
            assert accepted, "nothing was accepted: the fuzz proved nothing"
            assert bridge.running, bridge.log_text()[-3000:]
            assert "thread.crashed" not in bridge.log_text(), bridge.log_text()[-3000:]
            # Nothing bad was stored: every accepted body is delivered, and it parses again.
            bridge.wait_until(
                lambda: len(platform.accepted()) >= len(accepted), timeout=60, message="all accepted delivered"
            )
            _status, health = bridge.healthz()
            assert health["queue"]["dead"] == 0, bridge.cli("queue", "--dead").stdout[-3000:]
            for rec in platform.accepted():
                parse(rec.body)
        finally:
            session.close()
            platform.stop()
