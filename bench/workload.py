"""Telegraf-like ``cpu`` points, encoded straight to UDF request frames.

What Kapacitor would send for ``stream|from().measurement('cpu').groupBy('host')``
fed by telegraf's cpu input: name ``cpu``, database ``telegraf``, retention policy
``autogen``, group ``host=<host>``, dimensions ``["host"]``, tags ``cpu`` and
``host``, and 3-9 double fields (``usage_user`` always, then a varying number of
the others), one point per host every 10 s of point time.

Frames are built by hand from pre-encoded pieces (a group's constant part, a
table of field blocks) because building a million ``Point`` messages in Python
would take longer than sending them; :func:`check_encoding` proves the bytes are
the same message protobuf would build.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from udf import udf_pb2 as pb
from udf.framing import encode_uvarint

__all__ = [
    "FIELD",
    "T0_NS",
    "Workload",
    "check_encoding",
    "field_block",
    "keepalive_frame",
]

#: The field our alert-state and InfluxData's moving_avg evaluate.
FIELD = "usage_user"
_OTHER_FIELDS = (
    "usage_system",
    "usage_idle",
    "usage_iowait",
    "usage_nice",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
)
#: 2023-11-14T22:13:20Z: any fixed epoch works, the UDFs only compare times.
T0_NS = 1_700_000_000 * 10**9
INTERVAL_NS = 10 * 10**9
_BLOCKS = 4096
_pack_d = struct.Struct("<d").pack


def _ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return bytes((tag,)) + encode_uvarint(len(payload)) + payload


def _str_entry(map_tag: int, key: str, value: str) -> bytes:
    return _ld(map_tag, _ld(0x0A, key.encode()) + _ld(0x12, value.encode()))


def _double_entry(key: str, value: float) -> bytes:
    return _ld(0x42, _ld(0x0A, key.encode()) + b"\x11" + _pack_d(value))


def _int_entry(key: str, value: int) -> bytes:
    return _ld(0x4A, _ld(0x0A, key.encode()) + b"\x10" + encode_uvarint(value & 0xFFFFFFFFFFFFFFFF))


def field_block(values: Sequence[Tuple[str, float]], int_field: str = "") -> bytes:
    """Encoded ``fieldsDouble`` entries, in the given order (``int_field`` as a rounded ``fieldsInt`` entry)."""
    return b"".join(_int_entry(k, round(v)) if k == int_field else _double_entry(k, v) for k, v in values)


def _group_part(host: str) -> bytes:
    """Everything of a point after its time and before its fields (constant per host)."""
    return b"".join(
        (
            _ld(0x12, b"cpu"),
            _ld(0x1A, b"telegraf"),
            _ld(0x22, b"autogen"),
            _ld(0x2A, f"host={host}".encode()),
            _ld(0x32, b"host"),
            _str_entry(0x3A, "cpu", "cpu-total"),
            _str_entry(0x3A, "host", host),
        )
    )


def keepalive_frame(t_ns: int) -> bytes:
    inner = b"\x08" + encode_uvarint(t_ns)
    body = b"\x1a" + encode_uvarint(len(inner)) + inner
    return encode_uvarint(len(body)) + body


def _usage_table(seed: int) -> List[float]:
    """A CPU-like random walk in 0-100 that now and then crosses 70 and 90."""
    rng = random.Random(seed)
    v = 35.0
    out = []
    for _ in range(_BLOCKS):
        v += rng.gauss(0, 6.0)
        if rng.random() < 0.01:
            v = rng.uniform(85, 99)  # a spike
        v = min(max(v, 0.5), 99.5)
        out.append(round(v, 3))
    return out


@dataclass
class Workload:
    """``points`` points over ``groups`` hosts.

    ``active=None``: every host sends each round (round robin over all groups).
    ``active=A``: hosts come and go (containers, autoscaling): A hosts are live at
    a time, each sends ``points // groups`` points, then the next A take over; point
    time advances one interval per round of the live hosts. That is the shape in
    which ``expire`` bounds memory.
    """

    points: int
    groups: int
    active: Optional[int] = None
    keepalive_every: int = 10_000
    seed: int = 1
    #: Send the evaluated field as an integer (``fieldsInt``), as telegraf does for counters.
    int_field: bool = False

    def __post_init__(self) -> None:
        if self.points <= 0 or self.groups <= 0:
            raise ValueError("points and groups must be positive")
        if self.active is not None and (self.groups % self.active or self.points % self.groups):
            raise ValueError("with active, groups must be a multiple of active and points of groups")

    @property
    def keepalives(self) -> int:
        return self.points // self.keepalive_every if self.keepalive_every else 0

    def _block_values(self) -> List[List[Tuple[str, float]]]:
        rng = random.Random(self.seed + 1)
        usage = _usage_table(self.seed)
        blocks = []
        for i in range(_BLOCKS):
            extra = 2 + i % 7  # 3..9 fields per point
            blocks.append(
                [(FIELD, usage[i])] + [(name, round(rng.uniform(0, 100), 3)) for name in _OTHER_FIELDS[:extra]]
            )
        return blocks

    def _blocks(self) -> List[bytes]:
        return [field_block(values, FIELD if self.int_field else "") for values in self._block_values()]

    def lines(self, batch: int = 5000) -> List[bytes]:
        """The same points as InfluxDB line protocol (precision ns), ``batch`` lines per body."""
        fields = [",".join(f"{k}={v!r}" for k, v in values) for values in self._block_values()]
        bodies: List[bytes] = []
        cur: List[str] = []
        for g, t, own in self.schedule():
            cur.append(f"cpu,cpu=cpu-total,host={self.host(g)} {fields[self._block_index(g, own)]} {t}")
            if len(cur) >= batch:
                bodies.append("\n".join(cur).encode())
                cur = []
        if cur:
            bodies.append("\n".join(cur).encode())
        return bodies

    def host(self, g: int) -> str:
        return f"host-{g:06d}"

    def schedule(self) -> Iterator[Tuple[int, int, int]]:
        """(group index, time ns, the group's own point number) of every point, in order."""
        g_total = self.groups
        if self.active is None:
            for i in range(self.points):
                r, g = divmod(i, g_total)
                yield g, T0_NS + r * INTERVAL_NS + g * 1000, r
        else:
            a = self.active
            per_group = self.points // g_total
            for i in range(self.points):
                r, slot = divmod(i, a)  # global round, slot among the live hosts
                window, own = divmod(r, per_group)
                yield window * a + slot, T0_NS + r * INTERVAL_NS + slot * 1000, own

    @staticmethod
    def _block_index(g: int, own: int) -> int:
        """Each host walks the usage table from its own offset: a plausible series."""
        return (own + g * 37) % _BLOCKS

    def frames(self, chunk_bytes: int = 1 << 20) -> List[bytes]:
        """All request frames (points, keepalives interleaved), joined into ~``chunk_bytes`` chunks."""
        blocks = self._blocks()
        nb = _BLOCKS
        parts: Dict[int, bytes] = {}
        uv = encode_uvarint
        chunks: List[bytes] = []
        cur: List[bytes] = []
        size = 0
        k_every = self.keepalive_every
        for i, (g, t, own) in enumerate(self.schedule()):
            part = parts.get(g)
            if part is None:
                part = parts[g] = _group_part(self.host(g))
            point = b"\x08" + uv(t) + part + blocks[(own + g * 37) % nb]
            body_len = 2 + len(uv(len(point))) + len(point)
            frame = uv(body_len) + b"\x8a\x01" + uv(len(point)) + point
            cur.append(frame)
            size += len(frame)
            if k_every and (i + 1) % k_every == 0:
                ka = keepalive_frame(t)
                cur.append(ka)
                size += len(ka)
            if size >= chunk_bytes:
                chunks.append(b"".join(cur))
                cur = []
                size = 0
        if cur:
            chunks.append(b"".join(cur))
        return chunks

    def sample_point(self, i: int = 0) -> pb.Point:
        """The ``i``-th point as protobuf builds it, for checks."""
        blocks = self._blocks()
        for j, (g, t, own) in enumerate(self.schedule()):
            if j == i:
                data = b"\x08" + encode_uvarint(t) + _group_part(self.host(g)) + blocks[self._block_index(g, own)]
                return pb.Point.FromString(data)
        raise IndexError(i)


def check_encoding() -> None:
    """Raise unless the hand-built bytes equal protobuf's own serialization."""
    p = pb.Point(
        time=T0_NS,
        name="cpu",
        database="telegraf",
        retentionPolicy="autogen",
        group="host=host-000001",
        dimensions=["host"],
    )
    p.tags["cpu"] = "cpu-total"
    p.tags["host"] = "host-000001"
    p.fieldsDouble[FIELD] = 12.5
    p.fieldsDouble["usage_system"] = 3.25
    ours = b"\x08" + encode_uvarint(T0_NS) + _group_part("host-000001") + field_block(
        [(FIELD, 12.5), ("usage_system", 3.25)]
    )
    if pb.Point.FromString(ours) != p:
        raise AssertionError("hand-encoded point differs from protobuf's")
    req = pb.Request.FromString(
        encode_uvarint(0)[:0] + b"\x8a\x01" + encode_uvarint(len(ours)) + ours
    )
    if req.point != p:
        raise AssertionError("hand-encoded request differs from protobuf's")
