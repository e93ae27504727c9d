"""A fast local "on-call platform" for the bridge drain benchmark.

An asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) in its own
process, so its CPU is not the load generator's: every POST is answered
``200 {}``; those to ``/alerts...`` are counted with their arrival times, the rest
only counted as ``other``. ``GET /_stats`` returns
``{"count", "other", "first", "last"}`` (times on ``time.monotonic()``, which is
the same clock in every process on Linux); ``GET /_reset`` zeroes them.

    .venv/bin/python -m bench.fast_receiver PORT      # prints "ready" when listening
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import List, Optional

__all__ = ["main"]

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Stats:
    def __init__(self) -> None:
        self.count = 0
        self.other = 0
        self.first: Optional[float] = None
        self.last: Optional[float] = None

    def hit(self) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1

    def body(self) -> bytes:
        return json.dumps({"count": self.count, "other": self.other, "first": self.first, "last": self.last}).encode()


class _Conn(asyncio.Protocol):
    def __init__(self, stats: _Stats) -> None:
        self.stats = stats
        self.buf = b""
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out: List[bytes] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            length = 0
            i = head.lower().find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                break
            line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
            buf = buf[total:]
            if line.startswith(b"GET /_stats"):
                body = self.stats.body()
                out.append(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                           + str(len(body)).encode() + b"\r\n\r\n" + body)
            elif line.startswith(b"GET /_reset"):
                self.stats.__init__()  # type: ignore[misc]
                out.append(_OK)
            else:
                if line.startswith(b"POST /alerts"):
                    self.stats.hit()
                else:
                    self.stats.other += 1
                out.append(_OK)
        self.buf = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def _serve(port: int) -> None:
    stats = _Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(stats), "127.0.0.1", port, backlog=1024, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        asyncio.run(_serve(int(args[0])))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
