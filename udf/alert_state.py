"""``@alertState()``: annotate every point with its group's alert state.

Data flow: Kapacitor → :class:`~udf.agent.Agent` → :class:`AlertStateHandler`
(protobuf in and out) → :class:`~udf.state.Evaluator` (the pure state machine) →
the same point, extended with ``alert_*`` fields.

Why it is fast and exact: the handler parses only a view of each point (``group``,
``time`` and the numeric field maps, :mod:`udf.point_view_pb2`), so the field is
found as a full parse finds it, and answers with the input point's own bytes
followed by encoded ``alert_*`` map entries (protobuf lets a later map entry
extend the message). The entries that depend only on the state (level, previous
level, changed, pending, flapping) are encoded once per distinct state and
cached; only ``duration`` and ``count`` are encoded per point. With
``.changesOnly()`` only the points whose level changed are answered.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import structlog
from google.protobuf.message import DecodeError

from . import udf_pb2 as pb
from .agent import Agent, Handler, HandlerFactory, main as agent_main
from .framing import encode_uvarint
from .point_view_pb2 import PointNumbers
from .options import INFO_OPTIONS, LEVEL_NAMES, AlertOptions, OptionError, options_help, parse_options
from .state import Evaluator, Groups, SnapshotError, decode_snapshot, encode_snapshot

__all__ = ["AlertStateHandler", "annotation_fields", "main"]

log = structlog.get_logger("udf.alert_state")

_VALUE_TYPES = {
    "BOOL": pb.BOOL,
    "INT": pb.INT,
    "DOUBLE": pb.DOUBLE,
    "STRING": pb.STRING,
    "DURATION": pb.DURATION,
}

#: Point map fields (field number → tag byte of a length-delimited entry).
_DOUBLE_MAP, _INT_MAP, _STRING_MAP, _BOOL_MAP = 0x42, 0x4A, 0x52, 0x62
_pack_double = struct.Struct("<d").pack
#: Groups whose "field missing" was logged are remembered up to this many.
_MISSING_LOG_LIMIT = 10_000
#: At most this many field names are listed in the "field not seen" warning.
_NAMES_SHOWN = 30


def annotation_fields(prefix: str) -> Dict[str, str]:
    """Names and types of the fields added to each point."""
    return {
        f"{prefix}level": "string",
        f"{prefix}level_code": "int",
        f"{prefix}previous_level": "string",
        f"{prefix}changed": "bool",
        f"{prefix}duration": "double",
        f"{prefix}count": "int",
        f"{prefix}pending": "string",
        f"{prefix}flapping": "bool",
    }


def _entry(map_tag: int, key: str, value_field: bytes) -> bytes:
    """One encoded map entry: ``key`` is field 1 (string), the value is field 2."""
    k = key.encode()
    body = b"\x0a" + encode_uvarint(len(k)) + k + value_field
    return bytes((map_tag,)) + encode_uvarint(len(body)) + body


def _string_entry(key: str, value: str) -> bytes:
    v = value.encode()
    return _entry(_STRING_MAP, key, b"\x12" + encode_uvarint(len(v)) + v)


def _int_entry(key: str, value: int) -> bytes:
    return _entry(_INT_MAP, key, b"\x10" + encode_uvarint(value & 0xFFFFFFFFFFFFFFFF))


def _bool_entry(key: str, value: bool) -> bytes:
    return _entry(_BOOL_MAP, key, b"\x10" + (b"\x01" if value else b"\x00"))


class _Encoder:
    """Encodes annotations; caches the state-only part per distinct state."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.cache: Dict[Tuple[int, int, bool, int, bool], bytes] = {}
        key = f"{prefix}duration".encode()
        # fieldsDouble entry of fixed size: key, then tag 0x11 and 8 bytes.
        body_len = 1 + len(encode_uvarint(len(key))) + len(key) + 1 + 8
        self.duration_head = (
            bytes((_DOUBLE_MAP,)) + encode_uvarint(body_len) + b"\x0a"
            + encode_uvarint(len(key)) + key + b"\x11"
        )
        self._count_key = f"{prefix}count"
        self.count_small = [_int_entry(self._count_key, n) for n in range(128)]
        self.count_cache: Dict[int, bytes] = {}

    def static(self, level: int, previous: int, changed: bool, pending: int, flapping: bool) -> bytes:
        """The state-only entries, followed by the head of the duration entry (its value
        comes next), so a point costs two concatenations."""
        state = (level, previous, changed, pending, flapping)
        cached = self.cache.get(state)
        if cached is None:
            p = self.prefix
            cached = b"".join(
                (
                    _string_entry(f"{p}level", LEVEL_NAMES[level]),
                    _int_entry(f"{p}level_code", level),
                    _string_entry(f"{p}previous_level", LEVEL_NAMES[previous]),
                    _bool_entry(f"{p}changed", changed),
                    _string_entry(f"{p}pending", LEVEL_NAMES[pending] if pending >= 0 else ""),
                    _bool_entry(f"{p}flapping", flapping),
                    self.duration_head,
                )
            )
            self.cache[state] = cached
        return cached

    def count(self, n: int) -> bytes:
        """The count entry; counts below 65536 are encoded once and reused."""
        if n < 128:
            return self.count_small[n]
        entry = self.count_cache.get(n)
        if entry is None:
            entry = _int_entry(self._count_key, n)
            if n < 65536:
                self.count_cache[n] = entry
        return entry



def _option_values(init: pb.InitRequest) -> List[Tuple[str, List[object]]]:
    """Init options as (name, python values), in call order (repeats kept)."""
    out: List[Tuple[str, List[object]]] = []
    for opt in init.options:
        values: List[object] = []
        for v in opt.values:
            kind = v.WhichOneof("value")
            values.append(getattr(v, kind) if kind is not None else None)
        out.append((opt.name, values))
    return out


class AlertStateHandler(Handler):
    """One task node's alert state: every group of its stream, isolated."""

    batch = False
    #: A task whose points never carry the field (a misspelled ``.field()``) logs one
    #: warning after this many such points in a row, or this many seconds of them,
    #: whichever comes first: soon on a busy stream, within a minute on a quiet one.
    field_warn_points = 1000
    field_warn_seconds = 60.0

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.opts: Optional[AlertOptions] = None
        self.groups: Optional[Groups] = None
        self._missing_logged: Set[str] = set()
        self._task = ("", "")
        self._without = 0
        self._without_since = 0.0
        self._warned = False
        self._names_seen: Dict[str, None] = {}
        self._batch_group = ""
        self._on_point: Callable[[bytes], None] = self._not_initialized

    def info(self) -> pb.InfoResponse:
        edge = pb.BATCH if self.batch else pb.STREAM
        resp = pb.InfoResponse(wants=edge, provides=edge)
        for name, types in INFO_OPTIONS.items():
            resp.options[name].valueTypes.extend(_VALUE_TYPES[t] for t in types)
        return resp

    def init(self, init: pb.InitRequest) -> pb.InitResponse:
        try:
            opts = parse_options(_option_values(init))
        except OptionError as exc:
            log.warning("alert_state.init_failed", task=init.taskID, node=init.nodeID, error=str(exc))
            return pb.InitResponse(success=False, error=f"@alertState(): {exc}")
        self.opts = opts
        self.groups = Groups(Evaluator(opts))
        self._task = (init.taskID, init.nodeID)
        self._on_point = self._make_point_path(opts, self.groups)
        log.info("alert_state.init", task=init.taskID, node=init.nodeID, field=opts.field)
        return pb.InitResponse(success=True)

    def snapshot(self) -> pb.SnapshotResponse:
        if self.groups is None:
            return pb.SnapshotResponse(snapshot=b"")
        return pb.SnapshotResponse(snapshot=encode_snapshot(self.groups))

    def restore(self, restore: pb.RestoreRequest) -> pb.RestoreResponse:
        if not restore.snapshot:
            return pb.RestoreResponse(success=True)
        if self.groups is None:
            return pb.RestoreResponse(success=False, error="restore before init")
        try:
            snap = decode_snapshot(restore.snapshot)
        except SnapshotError as exc:
            log.warning("alert_state.restore_failed", error=str(exc))
            return pb.RestoreResponse(success=False, error=str(exc))
        self.groups.restore(snap)
        log.info("alert_state.restored", groups=len(self.groups))
        return pb.RestoreResponse(success=True)

    def begin_batch(self, begin: pb.BeginBatch) -> None:
        self._batch_group = begin.group
        self.agent.write_begin(begin)

    def end_batch(self, end: pb.EndBatch) -> None:
        self.agent.write_end(end)

    def point_path(self) -> Callable[[bytes], None]:
        """The closure built at Init (points before Init are an error)."""
        return self._on_point

    def _not_initialized(self, data: bytes) -> None:
        raise RuntimeError("point before init")

    def _missing(self, v: PointNumbers, data: bytes) -> None:
        """A point without the field: passed through; counted until the warning is due."""
        group = v.group
        if group not in self._missing_logged and len(self._missing_logged) < _MISSING_LOG_LIMIT:
            self._missing_logged.add(group)
            assert self.opts is not None
            log.debug("alert_state.field_missing", group=group, field=self.opts.field)
        if self._warned:
            return
        if self.groups:
            # A group exists only once some point carried the field: not a misspelling.
            self._without = 0
            return
        now = time.monotonic()
        if self._without == 0:
            self._without_since = now
        self._without += 1
        if len(self._names_seen) < _NAMES_SHOWN:
            self._note_names(data)
        if self._without >= self.field_warn_points or now - self._without_since >= self.field_warn_seconds:
            self._warn_field_not_seen(now)

    def _note_names(self, data: bytes) -> None:
        try:
            p = pb.Point.FromString(data)
        except DecodeError:  # a name that is not UTF-8: the view was enough to pass it on
            return
        for fields in (p.fieldsDouble, p.fieldsInt, p.fieldsString, p.fieldsBool):
            for name in fields:
                if len(self._names_seen) < _NAMES_SHOWN:
                    self._names_seen[name] = None

    def _warn_field_not_seen(self, now: float) -> None:
        """Log once per task: on kapacitord's stderr pipe, it becomes a ``UDF log`` line."""
        assert self.opts is not None
        self._warned = True
        names = sorted(self._names_seen)
        log.warning(
            "alert_state.field_not_seen",
            task=self._task[0],
            node=self._task[1],
            field=self.opts.field,
            points=self._without,
            seconds=round(now - self._without_since, 1),
            fields_seen=",".join(names) + (",..." if len(names) >= _NAMES_SHOWN else ""),
            hint="none of these points carried the field: check .field() in the TICKscript",
        )

    def _make_point_path(self, opts: AlertOptions, groups: Groups) -> Callable[[bytes], None]:
        """Build the per-point function with everything it needs bound to locals.

        The evaluated field is read from a :class:`PointNumbers` view of the point
        (its time, group and numeric field maps; the protobuf runtime skips every
        other field by its wire structure), so the value is exactly what a full
        ``Point`` parse would give: ``fieldsDouble`` first, then ``fieldsInt``.
        """
        field = opts.field
        view = PointNumbers.FromString
        get_state = groups.get
        update = groups.evaluator.update
        enc = _Encoder(opts.prefix)
        cache = enc.cache
        build = enc.static
        count_small = enc.count_small
        count_cache = enc.count_cache
        count_big = enc.count
        pack = _pack_double
        emit = self.agent.write_point_bytes
        missing = self._missing
        handler = self
        changes_only = opts.changes_only

        def on_point(data: bytes) -> None:
            try:
                v = view(data)
            except DecodeError as exc:
                raise DecodeError(f"{len(data)}-byte point is not a valid agent.Point ({exc})") from None
            value = v.fieldsDouble.get(field)
            if value is None:
                value = v.fieldsInt.get(field)
                if value is None:
                    missing(v, data)
                    if not changes_only:
                        emit(data)
                    return
            group = v.group
            t = v.time
            if not group:
                group = handler._batch_group
            s = get_state(group, t)
            update(s, value, t)
            if changes_only and not s.changed:
                return
            st = (s.level, s.previous, s.changed, s.pending, s.flapping)
            static = cache.get(st)
            if static is None:
                static = build(*st)
            n = s.count
            emit(
                data,
                static
                + pack((s.last_ns - s.start_ns) / 1e9)
                + (count_small[n] if n < 128 else (count_cache.get(n) or count_big(n))),
            )

        return on_point


def _factory(args: argparse.Namespace) -> HandlerFactory:
    batch = bool(args.batch)

    def make(agent: Agent) -> Handler:
        handler = AlertStateHandler(agent)
        handler.batch = batch
        return handler

    return make


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch", action="store_true", help="want and provide BATCH edges (default STREAM)"
    )
    if "--version" not in parser._option_string_actions:  # the shared agent parser may add it
        parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("kapacitor-oncall")
    except metadata.PackageNotFoundError:  # pragma: no cover - a tree that was never installed
        return "0+unknown"


_DESCRIPTION = """\
Kapacitor UDF @alertState(): annotates every point with its group's alert state
(alert_level, alert_changed, alert_duration, ...).

kapacitord starts this program itself, once per task node, and speaks the UDF
protocol on its stdin/stdout; declare it in kapacitor.conf:

  [udf.functions.alertState]
    prog = "/path/to/kapacitor-alert-state"
    timeout = "10s"

Run it by hand only in socket mode (--socket PATH, with socket = PATH in that
section instead of prog). Started by hand without --socket it waits for
Kapacitor's requests on stdin."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``kapacitor-alert-state``."""
    return agent_main(
        AlertStateHandler,
        argv,
        description=_DESCRIPTION,
        epilog="@alertState() options (TICKscript; value types as Kapacitor checks them):\n" + options_help(),
        add_arguments=_arguments,
        configure=_factory,
    )


if __name__ == "__main__":
    sys.exit(main())
