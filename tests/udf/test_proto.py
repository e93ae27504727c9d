"""The committed protocol module: current, and wire-compatible with Kapacitor."""

from __future__ import annotations

import subprocess
from pathlib import Path

from udf import udf_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def test_generated_module_is_current() -> None:
    """udf_pb2.py equals what the pinned protoc generates from udf.proto today."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "gen-proto"), "--check"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr


def test_field_numbers_match_kapacitor() -> None:
    """Field numbers are Kapacitor's (udf/agent/udf.proto), so the bytes interoperate."""
    numbers = {f.name: f.number for f in pb.Request.DESCRIPTOR.fields}
    assert numbers == {
        "info": 1, "init": 2, "keepalive": 3, "snapshot": 4, "restore": 5,
        "begin": 16, "point": 17, "end": 18,
    }
    assert {f.name: f.number for f in pb.Response.DESCRIPTOR.fields}["error"] == 6
    point = {f.name: f.number for f in pb.Point.DESCRIPTOR.fields}
    assert point == {
        "time": 1, "name": 2, "database": 3, "retentionPolicy": 4, "group": 5,
        "dimensions": 6, "tags": 7, "fieldsDouble": 8, "fieldsInt": 9,
        "fieldsString": 10, "byName": 11, "fieldsBool": 12,
    }
    value = {f.name: f.number for f in pb.OptionValue.DESCRIPTOR.fields}
    assert value == {
        "type": 1, "boolValue": 2, "intValue": 3, "doubleValue": 4,
        "stringValue": 5, "durationValue": 6,
    }
    assert pb.DESCRIPTOR.package == "agent"


def test_known_bytes() -> None:
    """A point request serializes to the bytes Go's protobuf produces for it."""
    req = pb.Request(point=pb.Point(time=1, name="m"))
    assert req.SerializeToString() == b"\x8a\x01\x05\x08\x01\x12\x01m"
