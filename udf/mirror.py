"""The simplest UDF: every point (and batch) goes out unchanged.

Useful to check a Kapacitor setup end to end, and the pass-through figure of the
benchmarks: it measures the agent itself. ``--raw`` skips protobuf parsing and
echoes the serialized point; the default parses it, like a handler that reads
the point would.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import udf_pb2 as pb
from .agent import Agent, Handler, HandlerFactory, main as agent_main

__all__ = ["MirrorHandler", "RawMirrorHandler", "main"]


class MirrorHandler(Handler):
    """Wants and provides STREAM (or BATCH with ``--batch``), no options."""

    edge = pb.STREAM

    def info(self) -> pb.InfoResponse:
        return pb.InfoResponse(wants=self.edge, provides=self.edge)


class RawMirrorHandler(MirrorHandler):
    """Echo the serialized point without parsing it."""

    def point_raw(self, data: bytes) -> None:
        self.agent.write_point_bytes(data)


def _factory(args: argparse.Namespace) -> HandlerFactory:
    base = RawMirrorHandler if args.raw else MirrorHandler
    edge = pb.BATCH if args.batch else pb.STREAM

    def make(agent: Agent) -> Handler:
        handler = base(agent)
        handler.edge = edge
        return handler

    return make


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", action="store_true", help="want and provide BATCH edges")
    parser.add_argument("--raw", action="store_true", help="do not parse points")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return agent_main(
        MirrorHandler,
        argv,
        description="Kapacitor pass-through UDF",
        add_arguments=_arguments,
        configure=_factory,
    )


if __name__ == "__main__":
    sys.exit(main())
