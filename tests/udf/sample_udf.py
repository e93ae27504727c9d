"""A tiny UDF for agent tests: counts points per session, fails on request.

Run as ``python tests/udf/sample_udf.py [--socket PATH]``. Each point gets a
``seen`` int field (points seen by this session); a point with a ``boom`` field
makes the handler raise, which the agent must turn into an ErrorResponse.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from udf import udf_pb2 as pb  # noqa: E402
from udf.agent import Agent, Handler, main  # noqa: E402


class CountingHandler(Handler):
    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.seen = 0

    def info(self) -> pb.InfoResponse:
        return pb.InfoResponse(wants=pb.STREAM, provides=pb.STREAM)

    def snapshot(self) -> pb.SnapshotResponse:
        return pb.SnapshotResponse(snapshot=str(self.seen).encode())

    def restore(self, restore: pb.RestoreRequest) -> pb.RestoreResponse:
        self.seen = int(restore.snapshot or b"0")
        return pb.RestoreResponse(success=True)

    def point(self, point: pb.Point) -> None:
        if "boom" in point.fieldsDouble:
            raise RuntimeError("boom field present")
        self.seen += 1
        point.fieldsInt["seen"] = self.seen
        self.agent.write_point(point)


if __name__ == "__main__":
    sys.exit(main(CountingHandler))
