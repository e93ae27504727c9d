"""The Kapacitor side of the UDF protocol, for tests, benchmarks and the demo.

Starts a UDF as a subprocess (or connects to its socket) and speaks to it the way
kapacitord does. A reader thread collects response frames so a test can send
thousands of points without deadlocking on full pipes.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import udf_pb2 as pb
from .framing import FrameError, FrameSplitter, encode_frame

__all__ = ["UdfClient", "option"]

_EOF = object()


def option(name: str, *values: Union[bool, int, float, str, "Duration"]) -> pb.Option:
    """Build an ``Option`` the way a TICKscript literal would arrive."""
    out = pb.Option(name=name)
    for value in values:
        v = out.values.add()
        if isinstance(value, Duration):
            v.type = pb.DURATION
            v.durationValue = value.ns
        elif isinstance(value, bool):
            v.type = pb.BOOL
            v.boolValue = value
        elif isinstance(value, int):
            v.type = pb.INT
            v.intValue = value
        elif isinstance(value, float):
            v.type = pb.DOUBLE
            v.doubleValue = value
        else:
            v.type = pb.STRING
            v.stringValue = value
    return out


class Duration:
    """A DURATION option value in nanoseconds (TICKscript ``1m`` → ``Duration(60e9)``)."""

    def __init__(self, ns: Union[int, float]) -> None:
        self.ns = int(ns)

    @classmethod
    def seconds(cls, s: float) -> "Duration":
        return cls(s * 1e9)


class UdfClient:
    """Drive a UDF over pipes (``argv``) or a unix socket (``socket_path``)."""

    def __init__(
        self,
        argv: Optional[Sequence[str]] = None,
        *,
        socket_path: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        stderr: Any = subprocess.PIPE,
        raw: bool = False,
    ) -> None:
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.sock: Optional[socket.socket] = None
        self.raw = raw
        self.responses: "queue.Queue[Any]" = queue.Queue()
        self.read_error: Optional[str] = None
        if socket_path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(socket_path)
            except OSError:
                self.sock.close()
                raise
            self._write: Callable[[bytes], Any] = self.sock.sendall
            self._read: Callable[[int], bytes] = self.sock.recv
        else:
            assert argv is not None
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **(env or {})},
                bufsize=0,
            )
            assert self.proc.stdin is not None and self.proc.stdout is not None
            stdin, stdout = self.proc.stdin, self.proc.stdout
            self._write = stdin.write
            self._read = lambda n: os.read(stdout.fileno(), n)
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name="udf-client")
        self._reader.start()

    def _read_loop(self) -> None:
        splitter = FrameSplitter()
        put = self.responses.put
        try:
            while True:
                chunk = self._read(1 << 18)
                if not chunk:
                    splitter.check_eof()
                    break
                for frame in splitter.feed(chunk):
                    put(frame if self.raw else pb.Response.FromString(frame))
        except (FrameError, OSError, ValueError) as exc:
            self.read_error = str(exc)
        put(_EOF)

    # -- sending ----------------------------------------------------------------
    def send(self, request: pb.Request) -> None:
        self.send_bytes(encode_frame(request.SerializeToString()))

    def send_bytes(self, data: bytes) -> None:
        self._write(data)

    def info(self, timeout: float = 10.0) -> pb.InfoResponse:
        self.send(pb.Request(info=pb.InfoRequest()))
        return self.expect("info", timeout).info

    def init(self, options: Sequence[pb.Option], timeout: float = 10.0) -> pb.InitResponse:
        self.send(pb.Request(init=pb.InitRequest(options=options, taskID="t", nodeID="n1")))
        return self.expect("init", timeout).init

    def snapshot(self, timeout: float = 10.0) -> bytes:
        self.send(pb.Request(snapshot=pb.SnapshotRequest()))
        return bytes(self.expect("snapshot", timeout).snapshot.snapshot)

    def restore(self, data: bytes, timeout: float = 10.0) -> pb.RestoreResponse:
        self.send(pb.Request(restore=pb.RestoreRequest(snapshot=data)))
        return self.expect("restore", timeout).restore

    def keepalive(self, t: int, timeout: float = 10.0) -> int:
        self.send(pb.Request(keepalive=pb.KeepaliveRequest(time=t)))
        return int(self.expect("keepalive", timeout).keepalive.time)

    def close_input(self) -> None:
        """What Kapacitor does to stop a UDF: close its stdin (half-close a socket)."""
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_WR)
        elif self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    # -- receiving --------------------------------------------------------------
    def recv(self, timeout: float = 10.0) -> Optional[pb.Response]:
        """Next response, ``None`` at EOF; raises ``queue.Empty`` after ``timeout``."""
        item = self.responses.get(timeout=timeout)
        return None if item is _EOF else item

    def expect(self, kind: str, timeout: float = 10.0) -> pb.Response:
        """Next response, which must be of ``kind`` (an ErrorResponse raises)."""
        resp = self.recv(timeout)
        if resp is None:
            raise AssertionError(f"EOF while waiting for {kind} (read error: {self.read_error})")
        if isinstance(resp, bytes):
            resp = pb.Response.FromString(resp)
        got = resp.WhichOneof("message")
        if got != kind:
            raise AssertionError(f"expected {kind}, got {got}: {resp}")
        return resp

    def recv_points(self, n: int, timeout: float = 10.0) -> List[pb.Point]:
        return [self.expect("point", timeout).point for _ in range(n)]

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stderr_text(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return ""
        data: bytes = self.proc.stderr.read()
        return data.decode(errors="replace")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.close_input()
                except OSError:
                    pass
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> "UdfClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
