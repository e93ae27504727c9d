"""Hostile UDF input: every byte stream ends in an ErrorResponse or a clean exit, fast.

Kapacitor is the only peer a UDF has, but a broken Kapacitor, a truncated pipe or
a stray process on a socket can send anything. The promise checked here: whatever
arrives, the UDF answers with well-framed ``Response`` messages, reports a fatal
problem as an ``ErrorResponse`` (the last thing it writes) and exits within a
second of its input ending, never hanging and never dying with a bare traceback.

Three layers, slowest first: the real ``python -m udf.mirror`` and
``python -m udf.alert_state`` processes over pipes (few examples, each a process),
the socket server over many connections (one process, many examples), and the
pure pieces in-process (:class:`~udf.framing.FrameSplitter`, :class:`~udf.agent.Agent`
over byte pipes, thousands of examples).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import pytest
import structlog
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udf import udf_pb2 as pb
from udf.agent import Agent, Handler
from udf.alert_state import AlertStateHandler
from udf.client import UdfClient, option
from udf.framing import MAX_FRAME, FrameError, FrameSplitter, encode_frame, encode_uvarint, read_frame
from udf.mirror import MirrorHandler, RawMirrorHandler

MIRROR = [sys.executable, "-m", "udf.mirror"]
ALERT_STATE = [sys.executable, "-m", "udf.alert_state"]
ROOT = str(Path(__file__).resolve().parents[2])

#: Seconds a UDF may take to exit once its input has ended (or it reported an error).
#: The promise is one second; a very slow CI machine may raise it through the environment.
EXIT_LIMIT = float(os.environ.get("RELIABILITY_UDF_EXIT_LIMIT", "1.0"))
STANDARD = [option("field", "usage_user"), option("warn", 70.0), option("crit", 90.0)]
INT64 = st.integers(-(2**63), 2**63 - 1)

# -- strategies: requests, wrong messages, broken framing -----------------------

_text = st.text(max_size=24)
_keys = st.one_of(st.sampled_from(["usage_user", "host", "value", ""]), _text)


def _point(draw: Callable, cls: type = pb.Point) -> pb.Point:
    p = cls(
        time=draw(INT64),
        name=draw(_text),
        database=draw(_text),
        retentionPolicy=draw(_text),
        group=draw(_text),
        byName=draw(st.booleans()),
    )
    p.dimensions.extend(draw(st.lists(_text, max_size=3)))
    for k, v in draw(st.dictionaries(_keys, _text, max_size=3)).items():
        p.tags[k] = v
    for k, d in draw(st.dictionaries(_keys, st.floats(), max_size=3)).items():
        p.fieldsDouble[k] = d
    for k, i in draw(st.dictionaries(_keys, INT64, max_size=3)).items():
        p.fieldsInt[k] = i
    for k, s in draw(st.dictionaries(_keys, _text, max_size=2)).items():
        p.fieldsString[k] = s
    for k, b in draw(st.dictionaries(_keys, st.booleans(), max_size=2)).items():
        p.fieldsBool[k] = b
    return p


@st.composite
def points(draw: Callable) -> pb.Point:
    """Any Point, including NaN/inf values, empty groups and extreme times."""
    return _point(draw)


@st.composite
def option_values(draw: Callable) -> pb.OptionValue:
    """An option value whose declared type may disagree with the value it carries."""
    v = pb.OptionValue(type=draw(st.sampled_from([pb.BOOL, pb.INT, pb.DOUBLE, pb.STRING, pb.DURATION])))
    kind = draw(st.sampled_from(["boolValue", "intValue", "doubleValue", "stringValue", "durationValue", None]))
    if kind == "boolValue":
        v.boolValue = draw(st.booleans())
    elif kind in ("intValue", "durationValue"):
        setattr(v, kind, draw(INT64))
    elif kind == "doubleValue":
        v.doubleValue = draw(st.floats())
    elif kind == "stringValue":
        v.stringValue = draw(_text)
    return v


@st.composite
def inits(draw: Callable) -> pb.InitRequest:
    """Init requests with known and unknown option names and arbitrary values."""
    names = st.sampled_from(
        ["field", "warn", "crit", "info", "critReset", "warnReset", "for", "recoverFor",
         "flapping", "history", "expire", "prefix", "below", "nope"]
    ) | _text
    req = pb.InitRequest(taskID=draw(_text), nodeID=draw(_text))
    for name in draw(st.lists(names, max_size=5)):
        req.options.add(name=name).values.extend(draw(st.lists(option_values(), max_size=3)))
    return req


@st.composite
def requests(draw: Callable) -> pb.Request:
    """A well-formed Request of any kind."""
    kind = draw(st.sampled_from(["info", "init", "keepalive", "snapshot", "restore", "begin", "point", "end"]))
    if kind == "info":
        return pb.Request(info=pb.InfoRequest())
    if kind == "init":
        return pb.Request(init=draw(inits()))
    if kind == "keepalive":
        return pb.Request(keepalive=pb.KeepaliveRequest(time=draw(INT64)))
    if kind == "snapshot":
        return pb.Request(snapshot=pb.SnapshotRequest())
    if kind == "restore":
        return pb.Request(restore=pb.RestoreRequest(snapshot=draw(st.binary(max_size=64))))
    if kind == "begin":
        return pb.Request(begin=pb.BeginBatch(name=draw(_text), group=draw(_text), size=draw(INT64)))
    if kind == "end":
        return pb.Request(end=pb.EndBatch(name=draw(_text), group=draw(_text), tmax=draw(INT64)))
    return pb.Request(point=draw(points()))


@st.composite
def responses(draw: Callable) -> pb.Response:
    """A Response: the wrong direction, as a confused peer would echo it back."""
    kind = draw(st.sampled_from(["info", "init", "keepalive", "snapshot", "restore", "error", "point"]))
    if kind == "info":
        return pb.Response(info=pb.InfoResponse(wants=pb.BATCH, provides=pb.STREAM))
    if kind == "init":
        return pb.Response(init=pb.InitResponse(success=draw(st.booleans()), error=draw(_text)))
    if kind == "keepalive":
        return pb.Response(keepalive=pb.KeepaliveResponse(time=draw(INT64)))
    if kind == "snapshot":
        return pb.Response(snapshot=pb.SnapshotResponse(snapshot=draw(st.binary(max_size=32))))
    if kind == "restore":
        return pb.Response(restore=pb.RestoreResponse(success=False, error=draw(_text)))
    if kind == "error":
        return pb.Response(error=pb.ErrorResponse(error=draw(_text)))
    return pb.Response(point=draw(points()))


def _frame(msg: object) -> bytes:
    return encode_frame(msg.SerializeToString())  # type: ignore[attr-defined]


@st.composite
def chunks(draw: Callable) -> bytes:
    """One piece of a hostile stream."""
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        return _frame(draw(requests()))
    if kind == 3:
        return _frame(draw(responses()))
    if kind == 4:
        return draw(st.binary(min_size=1, max_size=64))
    if kind == 5:
        return encode_frame(draw(st.binary(max_size=64)))
    if kind == 6:
        # The point tag (field 17) followed by garbage: the agent's fast path.
        body = draw(st.binary(max_size=24))
        length = draw(st.sampled_from([len(body), len(body) + 1, 2**14, 2**35]))
        return encode_frame(b"\x8a\x01" + encode_uvarint(length)[: draw(st.integers(0, 5))] + body)
    if kind == 7:
        whole = _frame(draw(requests()))
        return whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    if kind == 8:
        # A length far beyond the limit, or a varint that never ends.
        huge = draw(st.one_of(st.integers(MAX_FRAME + 1, 2**64 - 1), st.just(2**70)))
        prefix = encode_uvarint(huge) if huge < 2**64 else b"\xff" * 11
        return prefix + draw(st.binary(max_size=8))
    # A legal but large length: the rest never comes.
    return encode_uvarint(draw(st.integers(65537, MAX_FRAME))) + draw(st.binary(max_size=8))


streams = st.lists(chunks(), min_size=1, max_size=6).map(b"".join)


# -- checking what came back ----------------------------------------------------


@dataclass
class Outcome:
    """What a UDF did with one input: its answers, exit and log."""

    status: Optional[int]
    frames: List[bytes] = field(default_factory=list)
    framing_error: Optional[str] = None
    stderr: str = ""
    seconds: float = 0.0

    def responses(self) -> List[pb.Response]:
        return [pb.Response.FromString(f) for f in self.frames]


def kinds_of(frames: Sequence[bytes], *, raw_points: bool = False) -> List[Optional[str]]:
    """The message kind of each response frame.

    ``raw_points``: a pass-through that never parses points (``mirror --raw``)
    echoes a garbage point as it came, so an unparsable point frame counts as a point.
    """
    kinds: List[Optional[str]] = []
    for f in frames:
        try:
            kinds.append(pb.Response.FromString(f).WhichOneof("message"))
        except DecodeError:
            if not (raw_points and f[:2] == b"\x8a\x01"):
                raise
            kinds.append("point")
    return kinds


def check_outcome(out: Outcome, *, must_fail: bool = False, raw_points: bool = False) -> List[Optional[str]]:
    """The invariants every session must keep, whatever its input was; returns the kinds."""
    assert out.status is not None, f"UDF still running {EXIT_LIMIT}s after its input ended (hang)"
    assert out.framing_error is None, f"UDF output is not valid framing: {out.framing_error}"
    kinds = kinds_of(out.frames, raw_points=raw_points)
    assert None not in kinds, f"a response without a message: {kinds}"
    assert "error" not in kinds[:-1], f"output after an ErrorResponse: {kinds}"
    failed = bool(kinds) and kinds[-1] == "error"
    if "Traceback" in out.stderr:
        assert "udf.handler_error" in out.stderr, "traceback-only death:\n" + out.stderr[-3000:]
    assert out.status in (0, 1), f"exit status {out.status}:\n{out.stderr[-3000:]}"
    assert failed == (out.status == 1), (
        f"exit {out.status} but responses end with {kinds[-1:] or 'nothing'}:\n{out.stderr[-3000:]}"
    )
    if must_fail:
        assert failed, f"expected an ErrorResponse, got {kinds}"
        assert out.responses()[-1].error.error, "ErrorResponse without a message"
    return kinds


def split_frames(data: bytes) -> Tuple[List[bytes], Optional[str]]:
    splitter = FrameSplitter()
    try:
        frames = splitter.feed(data)
        splitter.check_eof()
    except FrameError as exc:
        return [], str(exc)
    return frames, None


class UdfProcess:
    """One UDF subprocess with its stdout and stderr drained by threads."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            cwd=ROOT,
            bufsize=0,
        )
        self._out = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._out += data

    def output(self) -> bytes:
        with self._lock:
            return bytes(self._out)

    def wait_frames(self, n: int, timeout: float = 10.0) -> List[bytes]:
        """Block until at least ``n`` whole frames arrived (the handshake)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frames, _ = split_frames(self.output())
            if len(frames) >= n:
                return frames
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.005)
        raise AssertionError(f"no {n} frames from {self.proc.args!r}: {self.output()!r} {self.stderr()}")

    def write(self, data: bytes) -> None:
        """Write everything, tolerating a UDF that already quit (it may, after an error)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def wait_exit(self, limit: float) -> Tuple[Optional[int], float]:
        started = time.monotonic()
        try:
            status: Optional[int] = self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            status = None
        return status, time.monotonic() - started

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def finish(self, status: Optional[int], seconds: float, skip: int) -> Outcome:
        """Stop the process if it hung and collect the outcome (frames after ``skip``)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        data = self.output()
        frames, error = split_frames(data)
        out = Outcome(status, frames[skip:], error, self.stderr(), seconds)
        self.close()
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass
        self._err.close()


def _prelude(init: bool) -> List[bytes]:
    prelude = [_frame(pb.Request(keepalive=pb.KeepaliveRequest(time=1)))]
    if init:
        prelude.append(_frame(pb.Request(info=pb.InfoRequest())))
        prelude.append(_frame(pb.Request(init=pb.InitRequest(options=STANDARD, taskID="t", nodeID="n"))))
    return prelude


class _Spares:
    """One started, handshaking UDF kept ready per command line.

    Interpreter start-up is most of an example's cost; starting the next process
    while the current example runs lets the two cores overlap them.
    """

    def __init__(self) -> None:
        self._ready: dict = {}

    def _start(self, argv: Sequence[str], init: bool) -> UdfProcess:
        udf = UdfProcess(argv)
        udf.write(b"".join(_prelude(init)))
        return udf

    def take(self, argv: Sequence[str], init: bool) -> UdfProcess:
        key = (tuple(argv), init)
        udf = self._ready.pop(key, None) or self._start(argv, init)
        self._ready[key] = self._start(argv, init)
        return udf

    def close(self) -> None:
        for udf in self._ready.values():
            udf.close()
        self._ready.clear()


SPARES = _Spares()


@pytest.fixture(scope="module", autouse=True)
def _close_spares() -> Iterator[None]:
    yield
    SPARES.close()


def _handshake(argv: Sequence[str], init: bool) -> Tuple[UdfProcess, int]:
    """A UDF that has proven to be in its read loop (answered the prelude)."""
    udf = SPARES.take(argv, init)
    n = len(_prelude(init))
    frames = udf.wait_frames(n)
    if init:
        assert pb.Response.FromString(frames[2]).init.success
    return udf, n


def feed_and_close(argv: Sequence[str], payload: bytes, *, init: bool = False) -> Outcome:
    """Send ``payload`` after a handshake, end the input, give the UDF EXIT_LIMIT to exit."""
    udf, skip = _handshake(argv, init)
    try:
        udf.write(payload)
        udf.close_input()
        status, seconds = udf.wait_exit(EXIT_LIMIT)
        return udf.finish(status, seconds, skip)
    finally:
        udf.close()


def feed_and_hold(argv: Sequence[str], payload: bytes, *, init: bool = False) -> Outcome:
    """Send ``payload`` and keep stdin open: the UDF must fail and leave on its own."""
    udf, skip = _handshake(argv, init)
    try:
        udf.write(payload)
        status, seconds = udf.wait_exit(EXIT_LIMIT)
        return udf.finish(status, seconds, skip)
    finally:
        udf.close()


SUBPROCESS = settings(
    max_examples=int(os.environ.get("RELIABILITY_UDF_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the real processes -------------------------------------------------------


class TestMirrorProcess:
    """``python -m udf.mirror`` over pipes."""

    @SUBPROCESS
    @given(payload=streams, raw=st.booleans())
    def test_any_stream_ends_cleanly(self, payload: bytes, raw: bool) -> None:
        """Any byte stream ends in an ErrorResponse or a clean exit within a second."""
        check_outcome(feed_and_close(MIRROR + (["--raw"] if raw else []), payload), raw_points=raw)

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(encode_uvarint(MAX_FRAME + 1), id="length-over-limit"),
            pytest.param(encode_uvarint(2**64 - 1) + b"x", id="length-2^64"),
            pytest.param(b"\xff" * 11, id="varint-11-bytes"),
            pytest.param(encode_frame(b""), id="empty-frame"),
            pytest.param(encode_frame(b"\x8a\x01"), id="point-tag-without-length"),
            pytest.param(encode_frame(b"\x8a\x01\x80"), id="point-tag-truncated-length"),
            pytest.param(encode_frame(b"\x8a\x01\x05abc"), id="point-length-past-frame"),
            pytest.param(encode_frame(b"\x8a\x01\x03\xff\xff\xff"), id="point-garbage"),
            pytest.param(_frame(pb.Response(error=pb.ErrorResponse(error="x"))), id="error-response"),
            pytest.param(encode_frame(b"\x07garbage"), id="garbage-frame"),
        ],
    )
    def test_fatal_input_reported_while_stdin_stays_open(self, payload: bytes) -> None:
        """Broken framing or a wrong message gets an ErrorResponse and an exit without EOF."""
        check_outcome(feed_and_hold(MIRROR, payload), must_fail=True)

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(encode_uvarint(MAX_FRAME - 1) + b"abc", id="large-length-then-eof"),
            pytest.param(_frame(pb.Request(point=pb.Point(name="cpu", time=5)))[:-1], id="truncated-point"),
            pytest.param(b"\x80", id="eof-inside-length"),
        ],
    )
    def test_eof_inside_a_frame_is_reported(self, payload: bytes) -> None:
        """A stream that ends mid-frame is an error (not a silent exit 0), reported at once."""
        out = feed_and_close(MIRROR, payload)
        check_outcome(out, must_fail=True)
        assert "truncated" in out.responses()[-1].error.error

    def test_response_messages_as_requests(self) -> None:
        """Every Response kind sent as a Request is answered or refused, never hangs."""
        wrong = [
            pb.Response(info=pb.InfoResponse(wants=pb.BATCH)),
            pb.Response(keepalive=pb.KeepaliveResponse(time=9)),
            pb.Response(snapshot=pb.SnapshotResponse(snapshot=b"abc")),
            pb.Response(restore=pb.RestoreResponse(success=True, error="e")),
            pb.Response(point=pb.Point(name="cpu")),
            pb.Response(begin=pb.BeginBatch(name="b")),
            pb.Response(end=pb.EndBatch(name="b")),
        ]
        for resp in wrong:
            check_outcome(feed_and_close(MIRROR, _frame(resp)))


class TestAlertStateProcess:
    """``python -m udf.alert_state`` over pipes, before and after Init."""

    @SUBPROCESS
    @given(payload=streams)
    def test_any_stream_before_init(self, payload: bytes) -> None:
        """Before Init (points, restores, option garbage) every stream ends cleanly."""
        check_outcome(feed_and_close(ALERT_STATE, payload))

    @SUBPROCESS
    @given(payload=streams)
    def test_any_stream_after_init(self, payload: bytes) -> None:
        """After a valid Init, hostile points and frames still end cleanly."""
        check_outcome(feed_and_close(ALERT_STATE, payload, init=True))

    def test_point_before_init(self) -> None:
        """A point before Init is an ErrorResponse naming the problem, then an exit."""
        out = feed_and_hold(ALERT_STATE, _frame(pb.Request(point=pb.Point(name="cpu", time=1))))
        check_outcome(out, must_fail=True)
        assert "init" in out.responses()[-1].error.error
        assert "udf.handler_error" in out.stderr

    def test_nan_and_infinite_values(self) -> None:
        """NaN and ±inf field values are annotated or refused, never a crash."""
        payload = b""
        for i, v in enumerate([float("nan"), float("inf"), float("-inf"), 95.0, float("nan")]):
            p = pb.Point(name="cpu", time=i, group="host=a")
            p.fieldsDouble["usage_user"] = v
            payload += _frame(pb.Request(point=p))
        out = feed_and_close(ALERT_STATE, payload, init=True)
        kinds = check_outcome(out)
        assert out.status == 1 or kinds == ["point"] * 5


# -- the socket server: one process, many connections --------------------------


@pytest.fixture(scope="module")
def mirror_socket() -> Iterator[Tuple[str, subprocess.Popen, Path]]:
    """A mirror serving a unix socket, its stderr in a file for the checks."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mirror.sock")
        log_path = Path(tmp) / "stderr"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(MIRROR + ["--socket", path], stderr=log_file, cwd=ROOT)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(path):
                assert time.monotonic() < deadline, "socket never appeared"
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.01)
            yield path, proc, log_path
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _socket_session(path: str, payload: bytes) -> Tuple[bytes, float]:
    """Send, half-close, read to EOF; return the answer and the seconds EOF took."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(EXIT_LIMIT)
        s.connect(path)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        started = time.monotonic()
        data = bytearray()
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError(f"connection still open {EXIT_LIMIT}s after our half-close") from None
            if not chunk:
                break
            data += chunk
        return bytes(data), time.monotonic() - started


class TestSocketServer:
    """``udf.mirror --socket``: a bad connection never harms the server or the next one."""

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payload=streams)
    def test_any_stream_per_connection(
        self, mirror_socket: Tuple[str, subprocess.Popen, Path], payload: bytes
    ) -> None:
        """Each connection ends within a second, well framed, and the server lives on."""
        path, proc, log_path = mirror_socket
        data, _ = _socket_session(path, payload)
        frames, error = split_frames(data)
        assert error is None, error
        kinds = kinds_of(frames)
        assert "error" not in kinds[:-1]
        assert proc.poll() is None, "the socket server died"
        stderr = log_path.read_text(errors="replace")
        assert "udf.connection_error" not in stderr, "an exception escaped the agent:\n" + stderr[-3000:]

    def test_server_still_serves_after_fuzzing(self, mirror_socket: Tuple[str, subprocess.Popen, Path]) -> None:
        """After hostile connections a normal session still gets its point back."""
        path, _, _ = mirror_socket
        with UdfClient(socket_path=path) as c:
            assert c.keepalive(42) == 42
            c.send(pb.Request(point=pb.Point(name="cpu", time=3)))
            assert c.recv_points(1)[0].time == 3


# -- in process: the framing and the agent ---------------------------------------


def _chunked(data: bytes, sizes: Sequence[int]) -> List[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if sizes else len(data)
        out.append(data[pos : pos + n])
        pos += n
        i += 1
    return out


class TestFrameSplitter:
    """FrameSplitter against the byte-at-a-time reference ``read_frame``."""

    @settings(max_examples=600, deadline=None)
    @given(msgs=st.lists(st.binary(max_size=300), max_size=20), sizes=st.lists(st.integers(1, 700), max_size=8))
    def test_round_trip_any_chunking(self, msgs: List[bytes], sizes: List[int]) -> None:
        """Encoded frames come back whole and in order however the stream is cut."""
        splitter = FrameSplitter()
        got: List[bytes] = []
        for chunk in _chunked(b"".join(encode_frame(m) for m in msgs), sizes):
            got.extend(splitter.feed(chunk))
        splitter.check_eof()
        assert got == msgs and splitter.pending == 0

    @settings(max_examples=600, deadline=None)
    @given(
        data=st.one_of(st.binary(max_size=400), streams),
        sizes=st.lists(st.integers(1, 300), max_size=8),
        limit=st.integers(128, 1 << 20),
    )
    def test_agrees_with_read_frame(self, data: bytes, sizes: List[int], limit: int) -> None:
        """On any bytes the splitter yields what read_frame yields and fails where it fails."""
        reference: List[bytes] = []
        ref_error = False
        stream = io.BytesIO(data)
        try:
            while (frame := read_frame(stream, limit)) is not None:
                reference.append(frame)
        except FrameError:
            ref_error = True
        splitter = FrameSplitter(limit)
        got: List[bytes] = []
        error = False
        try:
            for chunk in _chunked(data, sizes):
                got.extend(splitter.feed(chunk))
            splitter.check_eof()
        except FrameError:
            error = True
        assert error == ref_error
        if error:
            # Frames completed in the chunk that held the error are not returned.
            assert got == reference[: len(got)]
        else:
            assert got == reference

    @settings(max_examples=300, deadline=None)
    @given(length=st.integers(65537, MAX_FRAME), sizes=st.lists(st.integers(1, 4096), min_size=1, max_size=4))
    def test_big_declared_length_costs_no_more_than_received(self, length: int, sizes: List[int]) -> None:
        """A huge declared length buffers only the bytes that actually arrived."""
        splitter = FrameSplitter()
        sent = encode_uvarint(length) + b"x" * 5000
        for chunk in _chunked(sent, sizes):
            assert splitter.feed(chunk) == []
        assert splitter.pending == len(sent)
        with pytest.raises(FrameError, match="truncated"):
            splitter.check_eof()


def _run_agent(handler: Callable[[Agent], Handler], data: bytes, sizes: Sequence[int]) -> Tuple[Agent, int, bytes]:
    pieces = iter(_chunked(data, sizes))
    out = bytearray()

    def read(_n: int) -> bytes:
        return next(pieces, b"")

    agent = Agent(handler, read, out.extend)
    with structlog.testing.capture_logs():
        status = agent.run()
    return agent, status, bytes(out)


def _init_frames() -> bytes:
    return _frame(pb.Request(info=pb.InfoRequest())) + _frame(
        pb.Request(init=pb.InitRequest(options=STANDARD, taskID="t", nodeID="n"))
    )


HANDLERS = {"mirror": MirrorHandler, "raw-mirror": RawMirrorHandler, "alert-state": AlertStateHandler}


class TestAgentInProcess:
    """The Agent loop over byte pipes, without processes: many examples."""

    @pytest.mark.parametrize("name", sorted(HANDLERS))
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payload=streams, sizes=st.lists(st.integers(1, 200), max_size=6), init=st.booleans())
    def test_run_never_raises(self, name: str, payload: bytes, sizes: List[int], init: bool) -> None:
        """run() returns 0 or 1 for any input; 1 exactly when an ErrorResponse was written last."""
        data = (_init_frames() if init else b"") + payload
        agent, status, out = _run_agent(HANDLERS[name], data, sizes)
        frames, error = split_frames(out)
        assert error is None
        kinds = kinds_of(frames, raw_points=name == "raw-mirror")
        assert "error" not in kinds[:-1]
        assert status in (0, 1)
        assert (status == 1) == (agent.failed is not None) == (bool(kinds) and kinds[-1] == "error")

    @settings(max_examples=400, deadline=None)
    @given(
        reqs=st.lists(
            st.one_of(
                points().map(lambda p: pb.Request(point=p)),
                INT64.map(lambda t: pb.Request(keepalive=pb.KeepaliveRequest(time=t))),
            ),
            max_size=12,
        ),
        sizes=st.lists(st.integers(1, 200), max_size=6),
        raw=st.booleans(),
    )
    def test_mirror_echoes_exactly(self, reqs: List[pb.Request], sizes: List[int], raw: bool) -> None:
        """Valid points come back unchanged and keepalives answered, in input order."""
        data = b"".join(_frame(r) for r in reqs)
        agent, status, out = _run_agent(RawMirrorHandler if raw else MirrorHandler, data, sizes)
        assert status == 0 and agent.failed is None
        frames, error = split_frames(out)
        assert error is None
        got = [pb.Response.FromString(f) for f in frames]
        want = [
            pb.Response(point=r.point)
            if r.HasField("point")
            else pb.Response(keepalive=pb.KeepaliveResponse(time=r.keepalive.time))
            for r in reqs
        ]
        assert got == want
