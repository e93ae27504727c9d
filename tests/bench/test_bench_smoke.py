"""The benchmark scripts run on tiny inputs and produce sane numbers and files.

No timing is asserted anywhere: the figures of a smoke run are meaningless, only
their presence, sign and bookkeeping are checked. InfluxData's repository is not
available to the test suite, so the anchor plumbing (regenerating ``udf_pb2``
from a checkout's ``udf.proto``, ``PYTHONPATH``, ``python -u``, a socket-server
mirror, the backend probe, per-round ratios) runs against a stand-in checkout
whose examples are tiny UDFs written here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict

import pytest

from bench.common import Figure, load_results, merge_results
from bench.driver import Session, Subject
from bench.workload import FIELD, Workload, check_encoding
from udf import udf_pb2 as pb
from udf.framing import FrameSplitter

REPO = Path(__file__).resolve().parents[2]

#: One script plays both stand-in examples: with a socket path it is a socket server
#: (like InfluxData's mirror.py), without one a stdio UDF adding an ``avg`` field.
_FAKE_EXAMPLE = textwrap.dedent(
    """
    import os, socket, sys
    from kapacitor.udf import udf_pb2 as pb

    def varint(n):
        out = bytearray()
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    def frames(read):
        buf = b""
        while True:
            chunk = read(65536)
            if not chunk:
                return
            buf += chunk
            while True:
                n = shift = i = 0
                complete = False
                while i < len(buf):
                    b = buf[i]
                    i += 1
                    n |= (b & 0x7F) << shift
                    shift += 7
                    if b < 0x80:
                        complete = True
                        break
                if not complete or len(buf) < i + n:
                    break
                yield buf[i:i + n]
                buf = buf[i + n:]

    def serve(read, write, field):
        for frame in frames(read):
            req = pb.Request.FromString(frame)
            kind = req.WhichOneof("message")
            resp = pb.Response()
            if kind == "info":
                resp.info.wants = pb.STREAM
                resp.info.provides = pb.STREAM
            elif kind == "init":
                resp.init.success = True
            elif kind == "keepalive":
                resp.keepalive.time = req.keepalive.time
            elif kind == "point":
                resp.point.CopyFrom(req.point)
                if field:
                    resp.point.fieldsDouble[field] = 1.0
            else:
                continue
            data = resp.SerializeToString()
            write(varint(len(data)) + data)

    def write_all(fd):
        def write(data):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        return write

    if len(sys.argv) > 1:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(sys.argv[1])
        server.listen(1)
        conn, _ = server.accept()
        serve(conn.recv, conn.sendall, None)
    else:
        serve(lambda n: os.read(0, n), write_all(1), "avg")
    """
)


def _fake_checkout(root: Path) -> Path:
    """A directory shaped like github.com/influxdata/kapacitor where the bench looks."""
    agent = root / "udf" / "agent"
    pkg = agent / "py" / "kapacitor" / "udf"
    pkg.mkdir(parents=True)
    (agent / "py" / "kapacitor" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "agent.py").write_text("from . import udf_pb2  # the regenerated module must import\n")
    (pkg / "udf_pb2.py").write_text("# Protobuf Python Version: 3.0.0\nraise ImportError('stale: must be regenerated')\n")
    shutil.copy(REPO / "udf" / "udf.proto", agent / "udf.proto")
    for name in ("moving_avg", "mirror"):
        ex = agent / "examples" / name
        ex.mkdir(parents=True)
        (ex / f"{name}.py").write_text(_FAKE_EXAMPLE)
    return root


def _run_bench(tmp_path: Path, *args: str) -> Dict[str, Any]:
    out = tmp_path / "out"
    env = {**os.environ, "BENCH_WORK_DIR": str(tmp_path / "work"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = load_results(out / "results.json")
    data["md"] = (out / "results.md").read_text()
    data["png"] = (out / "results.png").read_bytes()
    return data


class TestWorkload:
    def test_hand_encoding_matches_protobuf(self) -> None:
        """The hand-built point bytes decode to the message protobuf itself would build."""
        check_encoding()

    def test_frames_hold_every_point_and_keepalive(self) -> None:
        """Splitting the chunks yields exactly the points and the interleaved keepalives."""
        w = Workload(2_500, 7, keepalive_every=1_000)
        splitter = FrameSplitter()
        kinds: Dict[str, int] = {}
        groups = set()
        for chunk in w.frames(chunk_bytes=4096):
            for frame in splitter.feed(chunk):
                req = pb.Request.FromString(frame)
                kind = req.WhichOneof("message")
                kinds[kind] = kinds.get(kind, 0) + 1
                if kind == "point":
                    groups.add(req.point.group)
                    assert FIELD in req.point.fieldsDouble
                    assert 3 <= len(req.point.fieldsDouble) <= 9
        splitter.check_eof()
        assert kinds == {"point": 2_500, "keepalive": 2}
        assert len(groups) == 7

    def test_churning_hosts_cover_every_group(self) -> None:
        """With ``active``, every host sends its share and point time only moves forward."""
        w = Workload(1_000, 100, active=10)
        seen: Dict[int, int] = {}
        last = 0
        for g, t, _own in w.schedule():
            seen[g] = seen.get(g, 0) + 1
            assert t >= last - 10_000  # slots within a round are µs apart
            last = max(last, t)
        assert seen == {g: 10 for g in range(100)}

    def test_line_protocol_has_one_line_per_point(self) -> None:
        """The kapacitord workload carries the same number of points as line protocol."""
        bodies = Workload(1_234, 10).lines(batch=500)
        lines = [ln for b in bodies for ln in b.decode().split("\n")]
        assert len(bodies) == 3 and len(lines) == 1_234
        assert lines[0].startswith("cpu,cpu=cpu-total,host=host-000000 usage_user=")


class TestDriver:
    def test_counts_every_frame_echoed_by_cat(self) -> None:
        """With ``cat`` as the UDF every request comes back: counts are exact, samples parse."""
        w = Workload(5_000, 10, keepalive_every=1_000)
        subject = Subject(key="cat", label="cat", argv=["cat"], env=dict(os.environ))
        with Session(subject) as s:
            res = s.run(w.frames(chunk_bytes=8192), 5_000, w.keepalives)
        assert (res.points, res.keepalives) == (5_000, 5)
        assert res.rate > 0 and res.seconds > 0
        assert len(res.samples) == 3 and all(p.name == "cpu" for p in res.samples)

    def test_alert_state_session_is_annotated(self) -> None:
        """Our alert-state UDF answers every point with alert_level, RSS is readable."""
        from bench.udf_throughput import ours_alert_state

        w = Workload(3_000, 50)
        with Session(ours_alert_state()) as s:
            s.handshake()
            res = s.run(w.frames(), 3_000, w.keepalives)
            assert s.rss() > 1 << 20
            assert s.snapshot_size() > 0
        assert res.points == 3_000
        assert all("alert_level" in p.fieldsString for p in res.samples)


class TestReport:
    def test_merge_replaces_by_key(self) -> None:
        """A re-measured section replaces its figures and keeps the others in place."""
        a = Figure("a", "s", "A", "x", [1.0])
        b = Figure("b", "s", "B", "x", [2.0])
        b2 = Figure("b", "s", "B", "x", [3.0])
        c = Figure("c", "s", "C", "x", [4.0])
        merged = merge_results([a, b], [b2, c])
        assert [(f.key, f.values) for f in merged] == [("a", [1.0]), ("b", [3.0]), ("c", [4.0])]

    def test_target_judged_on_median(self) -> None:
        """``met`` compares the median with the threshold in the stated direction."""
        assert Figure("k", "s", "l", "u", [1, 10, 11], compare="ge", threshold=10).met is True
        assert Figure("k", "s", "l", "u", [30, 10, 25], compare="le", threshold=20).met is False
        assert Figure("k", "s", "l", "u", [1.0]).met is None


@pytest.mark.slow
class TestWholeRun:
    def test_udf_section_without_anchor_says_so(self, tmp_path: Path) -> None:
        """Without --official-agent our figures are measured and the report says no comparison was made."""
        data = _run_bench(tmp_path, "--sections", "udf")
        keys = {f.key for f in data["figures"]}
        assert {"udf.mirror", "udf.alert-state-g100"} <= keys
        assert not any(k.startswith("udf.official") or k.startswith("udf.ratio") for k in keys)
        assert "not made" in data["md"]
        assert data["png"][:8] == b"\x89PNG\r\n\x1a\n"

    @pytest.mark.e2e
    def test_every_section_with_a_stand_in_anchor(self, tmp_path: Path) -> None:
        """All sections run; every figure has positive values; the anchor is regenerated and reported."""
        checkout = _fake_checkout(tmp_path / "kapacitor")
        data = _run_bench(tmp_path, "--official-agent", str(checkout))
        figs = {f.key: f for f in data["figures"]}
        for key in (
            "udf.mirror",
            "udf.official-mirror",
            "udf.official-moving-avg-g100",
            "udf.ratio.alert-state-g100.vs.official-moving-avg-g100",
            "mem.rss.expire",
            "e2e.1.5.9.udf",
            "e2e.1.5.9.alert-udf-changes",
            "bridge.accept.ids1000",
            "bridge.drain.ids1000",
            "replicas.accept.postgres3",
            "replicas.drain.postgres1",
            "replicas.failover_gap",
        ):
            assert key in figs, key
        for f in figs.values():
            assert f.values and all(v > 0 for v in f.values), f.key
        notes = data["notes"]
        assert notes["udf"]["anchor"]["their_udf_pb2_gencode"] == "3.0.0"
        assert notes["udf"]["backend_official"]["backend"] == notes["udf"]["backend_ours"]["backend"]
        assert notes.get("failures") is None
        md = data["md"]
        for heading in ("## Machine", "## Targets", "## UDF throughput", "## UDF memory",
                        "## Through a real kapacitord", "## Bridge", "## Replicas on PostgreSQL",
                        "## Profiles and proposed fixes"):
            assert heading in md
        assert "**Bottleneck, kapacitord 1.5.9.**" in md and "udf/alert_state.py" in md
        assert json.loads((tmp_path / "out" / "results.json").read_text())["facts"]["quick"] is True
