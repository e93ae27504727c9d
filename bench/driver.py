"""The Kapacitor side of the UDF protocol, built to outrun the UDF it measures.

kapacitord is not in the loop here: a driver thread writes pre-encoded request
frames in ~1 MiB chunks while the calling thread reads the responses and only
*counts* them (a length-prefix walk and one tag byte per frame, no protobuf
parse). A few point responses are kept and parsed at the end to prove they are
well-formed and carry the expected annotation. UDF CPU and driver CPU are both
recorded so every figure shows who was busy: a UDF near 100 % of one core is the
bottleneck, as it should be on this 2-core machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import psutil  # type: ignore[import-untyped]

from udf import udf_pb2 as pb
from udf.framing import FrameSplitter, decode_uvarint, encode_frame

from .common import WORK_DIR, machine_busy

__all__ = ["DriverError", "RunResult", "Session", "Subject"]

_READ = 1 << 20
_TAG_POINT = 0x8A  # Response.point (field 17) first tag byte
_TAG_KEEPALIVE = 0x1A  # Response.keepalive (field 3)
_TAG_ERROR = 0x32  # Response.error (field 6)


class DriverError(RuntimeError):
    """The UDF misbehaved (error response, EOF, stall); the message carries its stderr tail."""


@dataclass
class Subject:
    """A UDF under test and how to start and initialise it."""

    key: str
    label: str
    argv: List[str]
    env: Dict[str, str]
    options: List[pb.Option] = field(default_factory=list)
    #: The UDF is a unix-socket server: ``argv`` + [socket path] starts it.
    socket: bool = False
    #: Which map and key a sample output point must carry, e.g. ("fieldsString", "alert_level").
    annotated: Optional[Tuple[str, str]] = None
    #: Modules the backend probe imports in the UDF's environment.
    probe_modules: List[str] = field(default_factory=list)
    #: Human-readable command line for the report.
    shown: str = ""
    #: How a socket server is stopped once its connection is closed.
    stop_signal: int = signal.SIGTERM


@dataclass
class RunResult:
    points: int
    keepalives: int
    seconds: float
    udf_cpu: float  # UDF CPU seconds / wall seconds (1.0 = one core)
    driver_cpu: float  # this process's CPU seconds / wall seconds
    other_cpu: float  # what every other process on the machine used, in cores
    rss_bytes: int
    samples: List[pb.Point]

    @property
    def rate(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else 0.0


class Session:
    """One UDF process (or socket connection) through Info, Init and one measured run."""

    def __init__(self, subject: Subject, *, timeout: float = 60.0) -> None:
        self.subject = subject
        self.timeout = timeout
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        self._stderr = tempfile.TemporaryFile(dir=WORK_DIR)
        self._tmpdir: "Optional[tempfile.TemporaryDirectory[str]]" = None
        self._sock: Optional[socket.socket] = None
        argv = list(subject.argv)
        if subject.socket:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="udfsock-", dir="/tmp")
            path = os.path.join(self._tmpdir.name, "udf.sock")
            argv.append(path)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if subject.socket else subprocess.PIPE,
            stdout=subprocess.DEVNULL if subject.socket else subprocess.PIPE,
            stderr=self._stderr,
            env=subject.env,
            cwd=tempfile.gettempdir(),
            bufsize=0,
        )
        self.ps = psutil.Process(self.proc.pid)
        if subject.socket:
            self._sock = self._connect(path)
            sock = self._sock
            self._write: Callable[[bytes], object] = sock.sendall
            self._read: Callable[[int], bytes] = sock.recv
        else:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            win, rout = self.proc.stdin.fileno(), self.proc.stdout.fileno()

            def write_all(data: bytes) -> None:
                view = memoryview(data)
                while view:
                    view = view[os.write(win, view):]

            self._write = write_all
            self._read = lambda n: os.read(rout, n)

    def _connect(self, path: str) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise DriverError(f"{self.subject.key}: server exited ({self.proc.returncode})\n{self.stderr_tail()}")
            if os.path.exists(path):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(path)
                    return s
                except OSError:
                    s.close()
            if time.monotonic() > deadline:
                raise DriverError(f"{self.subject.key}: socket {path} never accepted\n{self.stderr_tail()}")
            time.sleep(0.02)

    # -- synchronous part ---------------------------------------------------------
    def _request(self, request: pb.Request, kind: str) -> pb.Response:
        self._write(encode_frame(request.SerializeToString()))
        splitter = FrameSplitter()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            chunk = self._read(_READ)
            if not chunk:
                raise DriverError(f"{self.subject.key}: EOF waiting for {kind}\n{self.stderr_tail()}")
            frames = splitter.feed(chunk)
            if frames:
                resp = pb.Response.FromString(frames[0])
                got = resp.WhichOneof("message")
                if got != kind:
                    raise DriverError(f"{self.subject.key}: expected {kind}, got {got}: {resp}")
                return resp
        raise DriverError(f"{self.subject.key}: no {kind} response")

    def handshake(self) -> None:
        """Info then Init, as kapacitord's startup probe plus task start would."""
        self._request(pb.Request(info=pb.InfoRequest()), "info")
        init = self._request(
            pb.Request(init=pb.InitRequest(options=self.subject.options, taskID="bench", nodeID="udf1")), "init"
        ).init
        if not init.success:
            raise DriverError(f"{self.subject.key}: init failed: {init.error}")

    # -- measured part ------------------------------------------------------------
    def run(self, chunks: Sequence[bytes], points: int, keepalives: int, samples: int = 3) -> RunResult:
        """Send every chunk from a thread; count responses until all arrived."""
        write_error: List[BaseException] = []

        def writer() -> None:
            try:
                for c in chunks:
                    self._write(c)
            except BaseException as exc:  # noqa: BLE001 - reported by the reader
                write_error.append(exc)

        sample_at = [max(1, points * k // samples) for k in range(samples)] + [points + 1]
        sample_frames: List[bytes] = []
        me = psutil.Process()
        cpu0 = self.ps.cpu_times()
        my0 = me.cpu_times()
        busy0 = machine_busy()
        t0 = time.perf_counter()
        th = threading.Thread(target=writer, name="bench-writer", daemon=True)
        th.start()
        read = self._read
        rest = b""
        n_pt = n_ka = 0
        nxt_i = 0
        nxt = sample_at[0]
        t_last = t0
        while n_pt < points or n_ka < keepalives:
            chunk = read(_READ)
            if not chunk:
                raise DriverError(
                    f"{self.subject.key}: EOF after {n_pt}/{points} points, {n_ka}/{keepalives} keepalives"
                    f"{'; write error ' + repr(write_error[0]) if write_error else ''}\n{self.stderr_tail()}"
                )
            data = rest + chunk if rest else chunk
            n = len(data)
            pos = 0
            while pos < n:
                b = data[pos]
                if b < 0x80:
                    s = pos + 1
                    e = s + b
                else:
                    if pos + 1 >= n:
                        break
                    b2 = data[pos + 1]
                    if b2 < 0x80:
                        s = pos + 2
                        e = s + ((b & 0x7F) | (b2 << 7))
                    else:
                        v, s = decode_uvarint(data, pos)
                        if v is None:
                            break
                        e = s + v
                if e > n:
                    break
                tag = data[s]
                if tag == _TAG_POINT:
                    n_pt += 1
                    if n_pt >= nxt:
                        sample_frames.append(data[s:e])
                        nxt_i += 1
                        nxt = sample_at[nxt_i]
                elif tag == _TAG_KEEPALIVE:
                    n_ka += 1
                else:
                    resp = pb.Response.FromString(data[s:e])
                    raise DriverError(f"{self.subject.key}: unexpected response {resp}\n{self.stderr_tail()}")
                pos = e
            rest = data[pos:] if pos < n else b""
            if n_pt >= points and t_last == t0:
                t_last = time.perf_counter()
        if t_last == t0:
            t_last = time.perf_counter()
        wall = t_last - t0
        cpu1 = self.ps.cpu_times()
        my1 = me.cpu_times()
        busy = machine_busy() - busy0
        th.join(self.timeout)
        rss = self.ps.memory_info().rss
        parsed = [pb.Response.FromString(f).point for f in sample_frames]
        self._check_samples(parsed)
        udf_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        me_s = (my1.user + my1.system) - (my0.user + my0.system)
        return RunResult(
            points=n_pt,
            keepalives=n_ka,
            seconds=wall,
            udf_cpu=udf_s / wall,
            driver_cpu=me_s / wall,
            other_cpu=max(0.0, busy - udf_s - me_s) / wall,
            rss_bytes=rss,
            samples=parsed,
        )

    def _check_samples(self, points: List[pb.Point]) -> None:
        if not points:
            raise DriverError(f"{self.subject.key}: no point came back")
        mapname, key = self.subject.annotated or ("fieldsDouble", "usage_user")
        for p in points:
            if p.name != "cpu" or not p.group.startswith("host=") or key not in getattr(p, mapname):
                raise DriverError(f"{self.subject.key}: output point lacks {mapname}[{key!r}]: {p}")

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def snapshot_size(self) -> int:
        """Bytes of a SnapshotResponse (the UDF's whole state, serialized)."""
        return len(self._request(pb.Request(snapshot=pb.SnapshotRequest()), "snapshot").snapshot.snapshot)

    # -- teardown -----------------------------------------------------------------
    def stderr_tail(self, lines: int = 15) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Close input as kapacitord does, then wait; kill whatever does not leave."""
        try:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._drain()
                self._sock.close()
                if self.proc.poll() is None:
                    self.proc.send_signal(self.subject.stop_signal)
            elif self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
                self._drain()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._stderr.close()
            if self._tmpdir is not None:
                self._tmpdir.cleanup()

    def _drain(self) -> None:
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if not self._read(_READ):
                    return
        except OSError:
            return

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
