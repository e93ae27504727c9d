"""A fast, typed agent for Kapacitor user-defined functions.

Data flow: Kapacitor writes length-prefixed ``Request`` frames; the agent splits
them (:mod:`udf.framing`), answers keepalives itself, hands everything else to a
:class:`Handler`, and writes ``Response`` frames back.

Why it is fast: ``Request.point`` and ``Response.point`` are both field 17, so a
point frame is re-wrapped for output without ``CopyFrom``; handlers that define
``point_raw`` receive the point's serialized bytes and may answer by appending
encoded fields to them. Output is buffered and written in one ``write`` each time
the input would block, while Info/Init/Snapshot/Restore/keepalive answers go out
at once (Kapacitor waits for them).

Kapacitor runs the UDF as a child process (stdio) or connects to a unix socket
(``--socket PATH``); both run the same :class:`Agent` loop.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import structlog
from google.protobuf.message import DecodeError

from . import udf_pb2 as pb
from .framing import MAX_FRAME, FrameError, FrameSplitter, decode_uvarint, encode_uvarint

__all__ = [
    "Agent",
    "Handler",
    "HandlerFactory",
    "configure_logging",
    "main",
    "package_version",
    "serve_socket",
    "serve_stdio",
]

log = structlog.get_logger("udf.agent")

#: Read size: large enough that one read usually carries hundreds of points.
CHUNK = 1 << 18
#: After a read shorter than this, wait ``COALESCE_S`` before the next one (answers
#: already sent), so a steady trickle is read in batches: kapacitord writes every
#: point as two unbuffered writes, and a reader woken by each spends more CPU on
#: wake-ups than on points, on a machine whose cores kapacitord needs too.
COALESCE_BELOW = 1 << 14
COALESCE_S = float(os.environ.get("UDF_READ_COALESCE_S", "0.001"))

# Tag bytes of the Request oneof fields (field number << 3 | wire type 2).
_TAG_BEGIN = b"\x82\x01"
_TAG_POINT = b"\x8a\x01"
_TAG_END = b"\x92\x01"

_KIND_BY_FIELD = {
    f.number: f.name for f in pb.Request.DESCRIPTOR.oneofs_by_name["message"].fields
}


def _request_kind(frame: bytes) -> str:
    """Name the request a (possibly broken) frame claims to be, for error messages."""
    if not frame:
        return "empty"
    try:
        tag, _ = decode_uvarint(frame, 0)
    except FrameError:
        return "unknown"
    return _KIND_BY_FIELD.get((tag or 0) >> 3, "unknown")


def _point_header(size: int) -> bytes:
    """Frame length + Response.point tag + point length, for a point of ``size`` bytes."""
    inner = encode_uvarint(size)
    header = encode_uvarint(2 + len(inner) + size) + _TAG_POINT + inner
    if size < 65536:
        _POINT_HEADERS[size] = header
    return header


_POINT_HEADERS: Dict[int, bytes] = {}


class Handler:
    """Base for UDF handlers; the shape of InfluxData's agent Handler.

    ``info``/``init``/``snapshot``/``restore`` return their response message and
    the agent sends it at once. Data methods emit output through ``self.agent``
    (``write_point``, ``write_begin``, ``write_end``); nothing is returned.
    Define ``point_raw(self, data: bytes)`` instead of ``point`` to receive the
    serialized ``Point`` and skip parsing (see :meth:`Agent.write_point_bytes`).
    """

    def __init__(self, agent: "Agent") -> None:
        self.agent = agent

    def info(self) -> pb.InfoResponse:
        raise NotImplementedError("info")

    def init(self, init: pb.InitRequest) -> pb.InitResponse:
        return pb.InitResponse(success=True)

    def snapshot(self) -> pb.SnapshotResponse:
        return pb.SnapshotResponse(snapshot=b"")

    def restore(self, restore: pb.RestoreRequest) -> pb.RestoreResponse:
        """Accept an empty snapshot (Kapacitor sends one when another node had state)."""
        if restore.snapshot:
            return pb.RestoreResponse(success=False, error="restore not implemented")
        return pb.RestoreResponse(success=True)

    def begin_batch(self, begin: pb.BeginBatch) -> None:
        self.agent.write_begin(begin)

    def point(self, point: pb.Point) -> None:
        self.agent.write_point(point)

    def point_path(self) -> Optional[Callable[[bytes], None]]:
        """The function that takes serialized points, or None to receive parsed ones.

        Asked once at start and again after every Init and Restore, so a handler
        can hand out a closure specialised for its options. The default is the
        handler's ``point_raw`` method when it has one.
        """
        raw = getattr(self, "point_raw", None)
        return raw if callable(raw) else None

    def end_batch(self, end: pb.EndBatch) -> None:
        self.agent.write_end(end)


HandlerFactory = Callable[["Agent"], Handler]


class _Stop(Exception):
    """Raised inside the loop after an ErrorResponse was sent: the session is over."""


class Agent:
    """One UDF session (a process's stdio or one socket connection).

    ``read(n)`` returns up to ``n`` bytes (``b""`` at EOF); ``write(data)`` writes
    all of it. The agent is single-threaded: answers are produced in input order,
    so keepalives queue behind data exactly as Kapacitor expects.
    """

    def __init__(
        self,
        factory: HandlerFactory,
        read: Callable[[int], bytes],
        write: Callable[[bytes], Any],
        *,
        max_frame: int = MAX_FRAME,
        coalesce_s: float = 0.0,
    ) -> None:
        self.coalesce_s = coalesce_s
        self._read = read
        self._write = write
        self._out: List[bytes] = []
        self.failed: Optional[str] = None
        self.handler = factory(self)
        self._splitter = FrameSplitter(max_frame, fast_tag=_TAG_POINT)
        self._point_raw: Optional[Callable[[bytes], None]] = None
        self._refresh_point_path()

    # -- output ---------------------------------------------------------------
    def write_response(self, response: pb.Response, flush: bool = False) -> None:
        """Queue any Response; ``flush=True`` sends everything queued now."""
        body = response.SerializeToString()
        self._out.append(encode_uvarint(len(body)))
        self._out.append(body)
        if flush:
            self.flush()

    def write_point(self, point: pb.Point) -> None:
        """Queue a point as a Response without copying it into a new message."""
        self.write_point_bytes(point.SerializeToString())

    def write_point_bytes(self, data: bytes, extra: bytes = b"") -> None:
        """Queue a serialized Point, optionally extended by pre-encoded ``extra`` fields.

        Protobuf merges repeated occurrences of a message's fields (a map entry
        appended later wins), so ``data + extra`` is a valid, annotated Point.
        """
        size = len(data) + len(extra)
        header = _POINT_HEADERS.get(size)
        if header is None:
            header = _point_header(size)
        out = self._out
        out.append(header)
        out.append(data)
        if extra:
            out.append(extra)

    def write_begin(self, begin: pb.BeginBatch) -> None:
        self._write_field(_TAG_BEGIN, begin.SerializeToString())

    def write_end(self, end: pb.EndBatch) -> None:
        self._write_field(_TAG_END, end.SerializeToString())

    def write_frame(self, frame: bytes) -> None:
        """Queue an already serialized Response message (the length is added here)."""
        self._out.append(encode_uvarint(len(frame)))
        self._out.append(frame)

    def _write_field(self, tag: bytes, body: bytes) -> None:
        inner = encode_uvarint(len(body))
        self._out.append(encode_uvarint(len(tag) + len(inner) + len(body)) + tag + inner)
        self._out.append(body)

    def flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self._write(data)

    # -- input ----------------------------------------------------------------
    def run(self) -> int:
        """Serve until EOF; return 0 on a clean end, 1 after an error was reported."""
        splitter = self._splitter
        read = self._read
        feed = splitter.feed_to
        dispatch = self._dispatch
        pause = self.coalesce_s
        sleep = time.sleep
        try:
            while True:
                chunk = read(CHUNK)
                if not chunk:
                    splitter.check_eof()
                    self.flush()
                    return 0
                try:
                    # Points go straight to the handler's raw path; every other
                    # frame (and every point when there is none) to _dispatch.
                    feed(chunk, dispatch)
                except (_Stop, FrameError):
                    raise
                except DecodeError as exc:
                    self._fail(f"malformed point request: {exc}")
                except Exception as exc:  # noqa: BLE001 - reported to Kapacitor
                    self._handler_error("point", exc)
                self.flush()
                if pause and len(chunk) < COALESCE_BELOW:
                    sleep(pause)
        except _Stop:
            return 1
        except FrameError as exc:
            self._report(f"invalid frame from Kapacitor: {exc}")
            return 1
        except (BrokenPipeError, ConnectionResetError):
            log.info("udf.peer_closed")
            return 0

    def _refresh_point_path(self) -> None:
        self._point_raw = self.handler.point_path()
        self._splitter.on_fast = self._point_raw

    def _dispatch(self, frame: bytes) -> None:
        if frame[:2] == _TAG_POINT and len(frame) > 2:
            # Fast path: exactly one field, the point (how Kapacitor sends it).
            # Anything else, a cut-off length included, takes the full parse below,
            # which reports what is wrong.
            size: Optional[int]
            b = frame[2]
            if b < 0x80:
                start, size = 3, b
            else:
                try:
                    size, start = decode_uvarint(frame, 2)
                except FrameError:
                    size = None
            if size is not None and start + size == len(frame):
                data = frame[start:]
                try:
                    if self._point_raw is not None:
                        self._point_raw(data)
                    else:
                        self.handler.point(pb.Point.FromString(data))
                except DecodeError as exc:
                    self._fail(f"malformed point request: {exc}")
                except _Stop:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported to Kapacitor
                    self._handler_error("point", exc)
                return
        try:
            request = pb.Request.FromString(frame)
        except DecodeError as exc:
            self._fail(f"malformed {_request_kind(frame)} request: {exc}")
            return
        kind = request.WhichOneof("message")
        try:
            if kind == "point":
                point = request.point
                if self._point_raw is not None:
                    self._point_raw(point.SerializeToString())
                else:
                    self.handler.point(point)
            elif kind == "keepalive":
                self.write_response(
                    pb.Response(keepalive=pb.KeepaliveResponse(time=request.keepalive.time)),
                    flush=True,
                )
            elif kind == "begin":
                self.handler.begin_batch(request.begin)
            elif kind == "end":
                self.handler.end_batch(request.end)
            elif kind == "info":
                self.write_response(pb.Response(info=self.handler.info()), flush=True)
            elif kind == "init":
                self.write_response(pb.Response(init=self.handler.init(request.init)), flush=True)
                self._refresh_point_path()
            elif kind == "snapshot":
                self.write_response(pb.Response(snapshot=self.handler.snapshot()), flush=True)
            elif kind == "restore":
                self.write_response(
                    pb.Response(restore=self.handler.restore(request.restore)), flush=True
                )
                self._refresh_point_path()
            else:
                self._fail("request without a message (empty frame or unknown field)")
        except _Stop:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to Kapacitor
            self._handler_error(kind or "unknown", exc)

    def _handler_error(self, kind: str, exc: BaseException) -> None:
        log.error("udf.handler_error", request=kind, error=str(exc), exc_info=exc)
        self._fail(f"error processing request of type {kind}: {exc}", logged=True)

    def _fail(self, message: str, *, logged: bool = False) -> None:
        """Report a fatal error to Kapacitor and end the session."""
        self._report(message, logged=logged)
        raise _Stop()

    def _report(self, message: str, *, logged: bool = False) -> None:
        """Send an ErrorResponse (dropping output queued before it) and log it."""
        self.failed = message
        if not logged:
            log.error("udf.fatal", error=message)
        self._out.clear()
        try:
            self.write_response(pb.Response(error=pb.ErrorResponse(error=message)), flush=True)
        except OSError:
            pass


# -- process entry points -----------------------------------------------------


def configure_logging(level: str = "info") -> None:
    """Log ``key=value`` lines to stderr: Kapacitor copies each stderr line into its log."""
    import logging

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["level", "event"], sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _write_all_fd(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    return write


def serve_stdio(factory: HandlerFactory) -> int:
    """Serve Kapacitor over stdin/stdout (process mode); return the exit status."""
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    # Nothing but frames may reach stdout: route stray prints to stderr.
    sys.stdout = sys.stderr
    agent = Agent(factory, lambda n: os.read(stdin, n), _write_all_fd(stdout), coalesce_s=COALESCE_S)
    status = agent.run()
    if agent.failed is not None:
        # Close our side so Kapacitor sees the error then EOF, and leave without
        # waiting for it to close stdin.
        try:
            os.close(stdout)
        except OSError:
            pass
    return status


def _serve_connection(conn: socket.socket, factory: HandlerFactory) -> None:
    with conn:
        try:
            agent = Agent(factory, conn.recv, conn.sendall, coalesce_s=COALESCE_S)
            agent.run()
        except Exception as exc:  # noqa: BLE001 - one bad connection must not stop the server
            log.error("udf.connection_error", error=str(exc), exc_info=exc)
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve_socket(
    path: str, factory: HandlerFactory, *, ready: Optional[threading.Event] = None
) -> int:
    """Serve on a unix socket: one thread and one handler per connection.

    Kapacitor never starts socket UDFs and opens one connection per task node
    (plus one for its startup Info probe), so connections are independent.
    SIGTERM/SIGINT close the listener and remove the socket file.
    """
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale file from a crashed server
        else:
            probe.close()
            raise SystemExit(f"another server is listening on {path}")
        finally:
            probe.close()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        log.info("udf.socket_stopping", signal=signal.Signals(signum).name)
        stopping.set()
        try:
            server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        server.close()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    log.info("udf.socket_listening", path=path)
    if ready is not None:
        ready.set()
    try:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                break
            threading.Thread(
                target=_serve_connection, args=(conn, factory), daemon=True, name="udf-conn"
            ).start()
    finally:
        server.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        log.info("udf.socket_closed", path=path)
    return 0


def package_version() -> str:
    """The installed kapacitor-oncall version (package metadata), for ``--version``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kapacitor-oncall")
    except PackageNotFoundError:
        return "unknown (kapacitor-oncall is not installed)"


def main(
    factory: HandlerFactory,
    argv: Optional[Sequence[str]] = None,
    *,
    description: str = "Kapacitor UDF",
    epilog: Optional[str] = None,
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
    configure: Optional[Callable[[argparse.Namespace], HandlerFactory]] = None,
) -> int:
    """Command line shared by our UDFs: stdio by default, ``--socket PATH`` to serve."""
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--socket", metavar="PATH", help="serve on this unix socket (socket mode)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("UDF_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default: $UDF_LOG_LEVEL or info); logs go to stderr",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if configure is not None:
        factory = configure(args)
    if args.socket:
        return serve_socket(args.socket, factory)
    started = time.monotonic()
    status = serve_stdio(factory)
    log.debug("udf.exit", status=status, seconds=round(time.monotonic() - started, 3))
    return status
