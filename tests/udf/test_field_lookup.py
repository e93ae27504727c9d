"""The evaluated field is found exactly as a full ``Point`` parse finds it.

Differential: hypothesis builds points whose names, tags, dimensions, strings and
other fields carry arbitrary text, fragments of the encoded field entry (the bytes
a search in the raw point would match) and long keys with 2-byte length varints;
the evaluated field sits in ``fieldsDouble``, ``fieldsInt``, both or neither. Each
answer must equal the reference built from ``Point.FromString`` and an independent
:class:`~udf.state.Groups`: the point unchanged when the field is absent, else the
point plus the ``alert_*`` fields of its group's new state. Many examples run
through the real handler in process, fewer through the real ``kapacitor-alert-state``
process.
"""

from __future__ import annotations

import io
import struct
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udf import udf_pb2 as pb
from udf.agent import Agent
from udf.alert_state import AlertStateHandler
from udf.client import UdfClient, option
from udf.framing import decode_uvarint, encode_frame, encode_uvarint, read_frame
from udf.point_view_pb2 import PointNumbers
from udf.options import LEVEL_NAMES, parse_options
from udf.state import Evaluator, Groups

UDF = [sys.executable, "-m", "udf.alert_state"]
INT64 = st.integers(-(2**63), 2**63 - 1)
LONG = "f" * 130  # a key whose length needs a 2-byte varint


def _head(map_tag: int, key: str, value_tag: int, value_len: int) -> bytes:
    """An encoded map entry up to its value: what a raw-byte search would look for."""
    k = key.encode()
    body = 1 + len(encode_uvarint(len(k))) + len(k) + 1 + value_len
    return bytes((map_tag,)) + encode_uvarint(body) + b"\x0a" + encode_uvarint(len(k)) + k + bytes((value_tag,))


def _fragments(field: str) -> List[str]:
    """Entry heads (and whole entries) for ``field`` that are valid text."""
    out = []
    for raw in (
        _head(0x42, field, 0x11, 8),
        _head(0x42, field, 0x11, 8) + struct.pack("<d", 100.0),
        _head(0x42, field, 0x11, 8) + struct.pack("<d", 75.0)[:5],
        _head(0x4A, field, 0x10, 1) + b"\x05",
        b"\x0a" + encode_uvarint(len(field)) + field.encode(),
    ):
        try:
            out.append(raw.decode())
        except UnicodeDecodeError:  # a 2-byte length or a value byte >= 0x80: not text
            pass
    return out


FIELDS = ["usage_user", "x", LONG]


def _text(field: str) -> st.SearchStrategy[str]:
    piece = st.one_of(st.text(max_size=12), st.sampled_from(_fragments(field) or [field]), st.sampled_from([field, LONG, "usage_user"]))
    return st.lists(piece, max_size=4).map("".join)


def _tricky_double(field: str) -> st.SearchStrategy[float]:
    """Doubles whose 8 value bytes hold part of the field's entry head."""
    head = _head(0x42, field, 0x11, 8)
    raws = [(head[-k:] + b"\x00" * 8)[:8] for k in range(1, min(8, len(head)) + 1)]
    return st.one_of(st.floats(), st.sampled_from([struct.unpack("<d", r)[0] for r in raws]))


@st.composite
def adversarial_points(draw: Callable, field: str) -> pb.Point:
    text = _text(field)
    p = pb.Point(
        time=draw(st.integers(0, 10**12).map(lambda s: s * 10**6)),
        name=draw(text),
        database=draw(text),
        retentionPolicy=draw(text),
        group=draw(st.one_of(st.sampled_from(["host=a", "host=b", ""]), text)),
        byName=draw(st.booleans()),
    )
    p.dimensions.extend(draw(st.lists(text, max_size=2)))
    keys = st.one_of(text, st.sampled_from(["usage_system", LONG, "x" * 200]))
    for k, v in draw(st.dictionaries(keys, text, max_size=3)).items():
        p.tags[k] = v
    for k, d in draw(st.dictionaries(keys, _tricky_double(field), max_size=3)).items():
        p.fieldsDouble[k] = d
    for k, i in draw(st.dictionaries(keys, INT64, max_size=2)).items():
        p.fieldsInt[k] = i
    for k, s in draw(st.dictionaries(keys, text, max_size=3)).items():
        p.fieldsString[k] = s
    for k, b in draw(st.dictionaries(keys, st.booleans(), max_size=2)).items():
        p.fieldsBool[k] = b
    values = st.one_of(st.sampled_from([0.0, 10.0, 75.0, 95.0, 100.0]), st.floats(allow_nan=False))
    where = draw(st.sampled_from(["double", "int", "both", "neither"]))
    p.fieldsDouble.pop(field, None)
    p.fieldsInt.pop(field, None)
    if where in ("double", "both"):
        p.fieldsDouble[field] = draw(values)
    if where in ("int", "both"):
        p.fieldsInt[field] = draw(st.sampled_from([0, 75, 95, 100, -(2**63), 2**63 - 1]))
    return p


@st.composite
def cases(draw: Callable, max_points: int = 12) -> Tuple[str, List[bytes]]:
    """A field name and serialized points (Kapacitor's bytes: deterministic encoding)."""
    field = draw(st.sampled_from(FIELDS))
    pts = draw(st.lists(adversarial_points(field), min_size=1, max_size=max_points))
    return field, [p.SerializeToString(deterministic=draw(st.booleans())) for p in pts]


def _options(field: str) -> List[pb.Option]:
    return [option("field", field), option("warn", 70.0), option("crit", 90.0)]


def expected(field: str, points: Sequence[bytes]) -> List[pb.Point]:
    """The reference: a full parse of each point, the pure state machine, the documented fields."""
    opts = parse_options([("field", [field]), ("warn", [70.0]), ("crit", [90.0])])
    groups = Groups(Evaluator(opts))
    out = []
    for data in points:
        p = pb.Point.FromString(data)
        value: Optional[float] = p.fieldsDouble[field] if field in p.fieldsDouble else None
        if value is None and field in p.fieldsInt:
            value = p.fieldsInt[field]
        if value is not None:
            s = groups.get(p.group, p.time)
            groups.evaluator.update(s, value, p.time)
            p.fieldsString["alert_level"] = LEVEL_NAMES[s.level]
            p.fieldsInt["alert_level_code"] = s.level
            p.fieldsString["alert_previous_level"] = LEVEL_NAMES[s.previous]
            p.fieldsBool["alert_changed"] = s.changed
            p.fieldsDouble["alert_duration"] = (s.last_ns - s.start_ns) / 1e9
            p.fieldsInt["alert_count"] = s.count
            p.fieldsString["alert_pending"] = LEVEL_NAMES[s.pending] if s.pending >= 0 else ""
            p.fieldsBool["alert_flapping"] = s.flapping
        out.append(p)
    return out


def _same(got: Sequence[pb.Point], want: Sequence[pb.Point]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        # Compare serialized deterministic forms: NaN values compare unequal as floats.
        assert g.SerializeToString(deterministic=True) == w.SerializeToString(deterministic=True), (i, g, w)


def run_in_process(field: str, points: Sequence[bytes]) -> Tuple[int, List[pb.Response]]:
    status, frames = run_raw(field, points)
    return status, [pb.Response.FromString(f) for f in frames]


def run_raw(field: str, points: Sequence[bytes]) -> Tuple[int, List[bytes]]:
    """Info-less session (Init, then the points) through a real Agent; the response frames."""
    frames = [encode_frame(pb.Request(init=pb.InitRequest(options=_options(field), taskID="t", nodeID="n")).SerializeToString())]
    for data in points:
        frames.append(encode_frame(b"\x8a\x01" + encode_uvarint(len(data)) + data))
    chunks = iter([b"".join(frames)])
    out = bytearray()
    agent = Agent(AlertStateHandler, lambda _n: next(chunks, b""), out.extend)
    with structlog.testing.capture_logs():
        status = agent.run()
    frames = []
    stream = io.BytesIO(bytes(out))
    while (frame := read_frame(stream)) is not None:
        frames.append(frame)
    return status, frames


class TestDifferential:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases())
    def test_handler_matches_full_parse(self, case: Tuple[str, List[bytes]]) -> None:
        """Through the real handler and agent: every answer is what the full parse implies."""
        field, points = case
        status, responses = run_in_process(field, points)
        assert status == 0
        assert responses[0].WhichOneof("message") == "init" and responses[0].init.success
        assert all(r.WhichOneof("message") == "point" for r in responses[1:])
        _same([r.point for r in responses[1:]], expected(field, points))

    @settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases(max_points=40))
    def test_process_matches_full_parse(self, case: Tuple[str, List[bytes]]) -> None:
        """Through the real ``kapacitor-alert-state`` process over pipes."""
        field, points = case
        with UdfClient(UDF) as c:
            assert c.init(_options(field)).success
            for data in points:
                c.send_bytes(encode_frame(b"\x8a\x01" + encode_uvarint(len(data)) + data))
            got = c.recv_points(len(points))
        _same(got, expected(field, points))


class TestReviewedCases:
    """The shapes the review reproduced, each pinned."""

    def _one(self, p: pb.Point, field: str = "usage_user") -> pb.Point:
        data = p.SerializeToString()
        status, responses = run_in_process(field, [data])
        assert status == 0
        (want,) = expected(field, [data])
        _same([responses[1].point], [want])
        return responses[1].point

    @pytest.mark.parametrize("where", ["name", "group", "tag", "string", "double key", "database"])
    def test_entry_bytes_elsewhere_do_not_count(self, where: str) -> None:
        """The field's whole encoded entry (value 100) inside another part of a point without it."""
        fake = (_head(0x42, "usage_user", 0x11, 8) + struct.pack("<d", 100.0)).decode()
        p = pb.Point(time=1, group="g")
        if where == "name":
            p.name = fake
        elif where == "group":
            p.group = fake
        elif where == "tag":
            p.tags["host"] = fake
        elif where == "string":
            p.fieldsString["note"] = fake
        elif where == "double key":
            p.fieldsDouble[fake] = 1.0
        else:
            p.database = fake
        assert "alert_level" not in self._one(p).fieldsString

    def test_int_field_beside_a_fake_double(self) -> None:
        """The real int value is used, not a double spelled out in a string."""
        fake = (_head(0x42, "usage_user", 0x11, 8) + struct.pack("<d", 100.0)).decode()
        p = pb.Point(time=1, group="g")
        p.fieldsString["note"] = fake
        p.fieldsInt["usage_user"] = 5
        assert self._one(p).fieldsString["alert_level"] == "OK"

    def test_needle_inside_another_doubles_value(self) -> None:
        """Field ``x``: its entry head hidden in another double's 8 bytes is not the field."""
        head = _head(0x42, "x", 0x11, 8)
        p = pb.Point(time=1, group="g")
        p.fieldsDouble["y"] = struct.unpack("<d", (head + b"\x00" * 8)[:8])[0]
        p.fieldsInt["x"] = 95
        assert self._one(p, "x").fieldsString["alert_level"] == "CRITICAL"

    def test_point_ending_in_a_bare_entry_head(self) -> None:
        """A point whose last bytes are the entry head (a string value) passes through."""
        head = _head(0x42, "usage_user", 0x11, 8).decode()
        p = pb.Point(time=1, group="g")
        p.fieldsString["zz"] = head
        assert p.SerializeToString().endswith(head.encode())
        assert "alert_level" not in self._one(p).fieldsString

    def test_invalid_utf8_outside_the_numeric_fields_is_tolerated(self) -> None:
        """Kapacitor 1.5's encoder does not check UTF-8: a bad tag or name still gets annotated."""
        p = pb.Point(time=1, group="g")
        p.fieldsDouble["usage_user"] = 95.0
        bad_name = b"\x12\x02\xff\xfe"  # Point.name = invalid UTF-8
        status, frames = run_raw("usage_user", [p.SerializeToString() + bad_name])
        assert status == 0 and frames[1][:2] == b"\x8a\x01"
        # The answer carries Kapacitor's bytes back unchanged, so read it through the view.
        _, start = decode_uvarint(frames[1], 2)
        view = PointNumbers.FromString(frames[1][start:])
        assert view.fieldsInt["alert_level_code"] == 3 and view.fieldsDouble["usage_user"] == 95.0

    def test_undecodable_point_is_reported_not_a_struct_error(self) -> None:
        """A point cut inside an entry ends the task with an ErrorResponse naming the point."""
        p = pb.Point(time=1, group="g")
        p.fieldsDouble["usage_user"] = 95.0
        data = p.SerializeToString()[:-3]
        status, responses = run_in_process("usage_user", [data])
        assert status == 1
        err = responses[-1].error.error
        assert "malformed point request" in err and "not a valid agent.Point" in err
        assert "unpack" not in err
