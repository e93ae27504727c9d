"""Accept-path load run: how many alerts per second does ``POST /alerts/<target>`` take?

Not a test (no timed assertions); run it by hand::

    .venv/bin/python -m tests.bridge.loadgen --alerts 50000 --connections 64

It starts a bridge subprocess (webhook target on a local receiver; with
``--throttle`` the target is rate-limited so only the accept path is measured),
drives it with a minimal keep-alive HTTP/1.1 client on asyncio (cheaper than
any client library, so the bridge gets the CPU), and prints throughput and
latency percentiles of the 202s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any, Dict, List

from .harness import BridgeProcess, Receiver, kapacitor_event


async def _client(port: int, path: bytes, bodies: List[bytes], latencies: List[float], errors: List[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for body in bodies:
            request = (
                b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 202:
                errors.append(status)
    finally:
        writer.close()


async def _run(port: int, target: str, alerts: int, connections: int, ids: int) -> Dict[str, Any]:
    bodies = [
        json.dumps(kapacitor_event(f"cpu:host=h{i % ids}", "CRITICAL" if i % 3 else "WARNING")).encode()
        for i in range(alerts)
    ]
    share = [bodies[i::connections] for i in range(connections)]
    latencies: List[float] = []
    errors: List[int] = []
    started = time.perf_counter()
    await asyncio.gather(*(_client(port, f"/alerts/{target}".encode(), s, latencies, errors) for s in share))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "alerts": alerts,
        "connections": connections,
        "seconds": round(elapsed, 3),
        "accepted_per_second": round((alerts - len(errors)) / elapsed),
        "errors": len(errors),
        "p50_ms": round(pct(0.50), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(latencies[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads (Linux /proc)."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=50000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--ids", type=int, default=1000)
    parser.add_argument("--throttle", action="store_true", help="rate-limit delivery to measure accept alone")
    parser.add_argument("--workdir", default=None, help="where the store lives (default: a temp dir)")
    parser.add_argument("--warmup", type=int, default=2000)
    args = parser.parse_args()
    receiver = Receiver(default=200)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bridge-load-")
    limit = 'rate_limit = "1/1s"' if args.throttle else 'rate_limit = "off"'
    bridge = BridgeProcess(
        f"""
[server]
max_body_bytes = 1048576
[delivery]
repeat_interval = "0s"
[[target]]
name = "load"
type = "webhook"
url = "{receiver.url}/load"
{limit}
""",
        workdir,
        args=["--log-level", "warning"],
    )
    bridge.start()
    try:
        if args.warmup:
            asyncio.run(_run(bridge.port, "load", args.warmup, args.connections, args.ids))
        assert bridge.proc is not None
        cpu_before = _cpu_seconds(bridge.proc.pid)
        result = asyncio.run(_run(bridge.port, "load", args.alerts, args.connections, args.ids))
        cpu = _cpu_seconds(bridge.proc.pid) - cpu_before
        # CPU per alert is what the bridge costs, whatever else the machine is doing.
        result["bridge_cpu_us_per_alert"] = round(cpu / args.alerts * 1e6, 1)
        result["bridge_cpu_utilisation"] = round(cpu / result["seconds"], 2)
        result["delivered_during_run"] = len(receiver.requests)
        result["store"] = str(bridge.db_path)
        print(json.dumps(result, indent=2))
    finally:
        bridge.stop()
        receiver.stop()


if __name__ == "__main__":
    main()
