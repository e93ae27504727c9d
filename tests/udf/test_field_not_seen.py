"""A misspelled ``.field()`` is reported once, naming the field and the fields that did arrive.

kapacitord reads the UDF's stderr line by line and logs each as ``msg="UDF log"``
with the line as ``text``, so the warning must be one stderr line from the process.
"""

from __future__ import annotations

import io
import sys
from typing import Any, Dict, List, Sequence

import pytest
import structlog

from udf import udf_pb2 as pb
from udf.agent import Agent
from udf.alert_state import AlertStateHandler
from udf.client import UdfClient, option
from udf.framing import encode_frame, read_frame

UDF = [sys.executable, "-m", "udf.alert_state"]
TYPO = [option("field", "usage_usr"), option("warn", 70.0), option("crit", 90.0)]


def point(t: int, with_field: bool = False) -> pb.Point:
    p = pb.Point(time=t, name="cpu", group="host=a")
    p.fieldsDouble["usage_user"] = 50.0
    p.fieldsInt["threads"] = 4
    p.fieldsString["state"] = "up"
    if with_field:
        p.fieldsDouble["usage_usr"] = 95.0
    return p


def run(points: Sequence[pb.Point], *, warn_points: int = 5, warn_seconds: float = 3600.0) -> List[Dict[str, Any]]:
    """Init with the misspelled field, send the points in process; the log events."""

    class Handler(AlertStateHandler):
        field_warn_points = warn_points
        field_warn_seconds = warn_seconds

    frames = [pb.Request(init=pb.InitRequest(options=TYPO, taskID="cpu_alert", nodeID="alertState2"))]
    frames += [pb.Request(point=p) for p in points]
    data = iter([b"".join(encode_frame(r.SerializeToString()) for r in frames)])
    out = bytearray()
    agent = Agent(Handler, lambda _n: next(data, b""), out.extend)
    with structlog.testing.capture_logs() as logs:
        assert agent.run() == 0
    stream = io.BytesIO(bytes(out))
    answers = 0
    while read_frame(stream) is not None:
        answers += 1
    assert answers == 1 + len(points)  # every point still passes through
    return [e for e in logs if e["event"] == "alert_state.field_not_seen"]


class TestInProcess:
    def test_one_warning_after_n_points(self) -> None:
        """At the Nth point without the field: one warning naming it and the fields seen."""
        assert run([point(i) for i in range(4)]) == []
        (warning,) = run([point(i) for i in range(50)])
        assert warning["log_level"] == "warning"
        assert warning["field"] == "usage_usr" and warning["points"] == 5
        assert warning["fields_seen"] == "state,threads,usage_user"
        assert (warning["task"], warning["node"]) == ("cpu_alert", "alertState2")

    def test_quiet_stream_warns_after_the_time_bound(self) -> None:
        """Few points: the time bound fires first (0 s here: at the second point)."""
        (warning,) = run([point(0), point(1)], warn_points=1000, warn_seconds=0.0)
        assert warning["points"] in (1, 2)

    def test_no_warning_once_the_field_was_seen(self) -> None:
        """A field that is sometimes absent is not a misspelling."""
        assert run([point(0, with_field=True)] + [point(i) for i in range(1, 50)]) == []

    def test_the_name_list_is_bounded(self) -> None:
        """Points with many distinct fields: at most 30 names, marked as cut."""
        pts = []
        for i in range(10):
            p = point(i)
            for k in range(10):
                p.fieldsDouble[f"f{i:02d}_{k}"] = 1.0
            pts.append(p)
        (warning,) = run(pts)
        names = warning["fields_seen"].split(",")
        assert names[-1] == "..." and len(names) == 31


class TestProcess:
    @pytest.mark.parametrize("n", [1000])
    def test_warning_is_one_stderr_line(self, n: int) -> None:
        """The real process writes the warning as one key=value line on stderr (kapacitord's UDF log)."""
        with UdfClient(UDF) as c:
            assert c.init(TYPO).success
            for i in range(n + 10):
                c.send(pb.Request(point=point(i)))
            assert len(c.recv_points(n + 10)) == n + 10
            c.close_input()
            assert c.wait() == 0
            lines = [line for line in c.stderr_text().splitlines() if "alert_state.field_not_seen" in line]
        assert len(lines) == 1
        line = lines[0]
        assert line.startswith("level='warning' event='alert_state.field_not_seen'")
        assert "field='usage_usr'" in line and f"points={n}" in line
        assert "fields_seen='state,threads,usage_user'" in line
