"""Stand-in UDFs that isolate the cost of the UDF hop inside kapacitord.

Each does the least work its answer needs, so what kapacitord spends per point
with it is the hop itself: writing the request, and reading and decoding the
answer (if any) and passing it on.

    python -m bench.udf_hop --answer none     # consumes points, answers none (but END_GROUP's)
    python -m bench.udf_hop --answer echo     # answers each point unchanged (its own bytes)
    python -m bench.udf_hop --answer fields8  # answers each point plus eight added fields

``none`` answers the points of group ``END_GROUP`` only: the benchmark sends one
such point last, so its arrival downstream marks the end of a run.
"""

from __future__ import annotations

import argparse
import struct
import sys
from typing import Callable, Optional, Sequence

from udf import udf_pb2 as pb
from udf.agent import Agent, Handler, HandlerFactory, main as agent_main
from udf.framing import encode_uvarint
from udf.point_view_pb2 import PointNumbers

__all__ = ["END_GROUP", "EIGHT_FIELDS", "main"]

END_GROUP = "host=zz-end"


def _entry(map_tag: int, key: str, value: bytes) -> bytes:
    k = key.encode()
    body = b"\x0a" + encode_uvarint(len(k)) + k + value
    return bytes((map_tag,)) + encode_uvarint(len(body)) + body


#: Eight map entries of the kinds and sizes ``@alertState()`` adds (3 strings, 2 ints, 2 bools, 1 double).
EIGHT_FIELDS = b"".join(
    (
        _entry(0x52, "hop_level", b"\x12\x08CRITICAL"),
        _entry(0x4A, "hop_level_code", b"\x10\x03"),
        _entry(0x52, "hop_previous_level", b"\x12\x07WARNING"),
        _entry(0x62, "hop_changed", b"\x10\x01"),
        _entry(0x52, "hop_pending", b"\x12\x00"),
        _entry(0x62, "hop_flapping", b"\x10\x00"),
        _entry(0x42, "hop_duration", b"\x11" + struct.pack("<d", 12.5)),
        _entry(0x4A, "hop_count", b"\x10\x2a"),
    )
)


class HopHandler(Handler):
    """Answers points per ``mode``; Info/Init/keepalive/snapshot as any UDF."""

    mode = "echo"

    def info(self) -> pb.InfoResponse:
        return pb.InfoResponse(wants=pb.STREAM, provides=pb.STREAM)

    def point_path(self) -> Optional[Callable[[bytes], None]]:
        emit = self.agent.write_point_bytes
        if self.mode == "echo":
            return emit
        if self.mode == "fields8":
            extra = EIGHT_FIELDS
            return lambda data: emit(data, extra)
        view = PointNumbers.FromString
        end = END_GROUP

        def only_end(data: bytes) -> None:
            if view(data).group == end:
                emit(data)

        return only_end


def main(argv: Optional[Sequence[str]] = None) -> int:
    mode_holder = {"mode": "echo"}

    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--answer", choices=["none", "echo", "fields8"], default="echo")

    def configure(args: argparse.Namespace) -> HandlerFactory:
        mode_holder["mode"] = args.answer

        def make(agent: Agent) -> Handler:
            h = HopHandler(agent)
            h.mode = mode_holder["mode"]
            return h

        return make

    return agent_main(HopHandler, argv, description=__doc__, add_arguments=arguments, configure=configure)


if __name__ == "__main__":
    sys.exit(main())
