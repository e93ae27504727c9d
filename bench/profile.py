"""Where the time goes: cProfile of the UDF hot path and of the bridge.

* ``udf``: the agent and a handler run in this process over the benchmark's
  pre-encoded frames (read from memory, output discarded), under cProfile.
* ``bridge``: ``kapacitor-oncall-bridge serve`` runs under cProfile in every
  thread (HTTP loop, outbox writer, dispatcher, delivery loop) while the bench posts
  alerts at it and it delivers them to the fast receiver; the merged profile is
  written when it exits on SIGTERM.

Top functions (by own time) go to ``bench/.work/profile-<what>.txt`` and into the
results file.

    .venv/bin/python -m bench.profile udf|bridge [--points N] [--alerts N]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .common import PYTHON, REPO_ROOT, WORK_DIR, repo_env

__all__ = ["profile_bridge", "profile_udf", "top_table"]


def top_table(stats: pstats.Stats, limit: int = 12) -> List[Tuple[str, int, float, float]]:
    """(function, calls, own seconds, cumulative seconds), by own time."""
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.replace(str(REPO_ROOT) + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        where = f"{short}:{line}({func})" if line else func
        rows.append((where, nc, tt, ct))
    rows.sort(key=lambda r: r[2], reverse=True)
    return rows[:limit]


def _render(rows: List[Tuple[str, int, float, float]], total: float, what: str) -> str:
    out = [f"{what}: {total:.2f}s profiled", f"{'own s':>8} {'own %':>6} {'cum s':>8} {'calls':>10}  function"]
    for where, calls, own, cum in rows:
        out.append(f"{own:8.3f} {own / total:6.1%} {cum:8.3f} {calls:10d}  {where}")
    return "\n".join(out)


def profile_udf(handler: str = "alert-state", points: int = 200_000, groups: int = 100) -> Dict[str, object]:
    """Profile one handler over ``points`` frames in-process."""
    from udf import agent as agent_mod
    from udf import udf_pb2 as pb
    from udf.alert_state import AlertStateHandler
    from udf.mirror import MirrorHandler

    from .udf_throughput import ALERT_OPTIONS
    from .workload import Workload

    agent_mod.configure_logging("warning")
    chunks = list(Workload(points, groups).frames(chunk_bytes=1 << 18))
    init = pb.Request(init=pb.InitRequest(options=ALERT_OPTIONS if handler == "alert-state" else [])).SerializeToString()
    from udf.framing import encode_frame

    feed = [encode_frame(init)] + chunks
    it = iter(feed)

    def read(n: int) -> bytes:
        return next(it, b"")

    written = [0]

    def write(data: bytes) -> None:
        written[0] += len(data)

    factory = AlertStateHandler if handler == "alert-state" else MirrorHandler
    agent = agent_mod.Agent(factory, read, write)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    status = agent.run()
    prof.disable()
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"agent failed: {agent.failed}")
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = top_table(stats)
    text = _render(rows, total, f"udf {handler}, {points:,} points, {groups} groups (in-process, cProfile)")
    _save(f"udf-{handler}", text, stats)
    return {"what": f"udf-{handler}", "rows": rows, "total_s": total, "wall_s": wall, "points": points, "text": text}


def udf_ab(points: int = 200_000, groups: int = 100, repeats: int = 5) -> List[Dict[str, object]]:
    """Time the proposed UDF changes in-process against the current code (no profiler).

    Each variant is timed by this thread's CPU clock, in rotating order, and the
    median per variant is reported: on a shared machine wall time would mostly
    measure the neighbours.

    The variants are stand-ins built here by subclassing (``udf/`` is not edited):
    a splitter that decodes 2-byte length prefixes inline (enough for these
    frames: it skips the large-frame gathering of the real one), and an agent
    that calls the handler's per-point closure directly after Init.
    """
    from udf import agent as agent_mod
    from udf import udf_pb2 as pb
    from udf.alert_state import AlertStateHandler
    from udf.framing import FrameSplitter, decode_uvarint, encode_frame

    from .udf_throughput import ALERT_OPTIONS
    from .workload import Workload

    agent_mod.configure_logging("warning")

    class InlineSplitter(FrameSplitter):
        def feed(self, chunk: bytes) -> List[bytes]:
            data = self._rest + chunk if self._rest else chunk
            frames: List[bytes] = []
            append = frames.append
            n = len(data)
            pos = 0
            while pos < n:
                b = data[pos]
                if b < 0x80:
                    start = pos + 1
                    end = start + b
                elif pos + 1 < n and data[pos + 1] < 0x80:
                    start = pos + 2
                    end = start + ((b & 0x7F) | (data[pos + 1] << 7))
                else:
                    value, start = decode_uvarint(data, pos)
                    if value is None:
                        break
                    end = start + value
                if end > n:
                    break
                append(data[start:end])
                pos = end
            self._rest = data[pos:] if pos < n else b""
            return frames

    class DirectHandler(AlertStateHandler):
        def init(self, init: pb.InitRequest) -> pb.InitResponse:
            resp = super().init(init)
            if resp.success:
                self.agent._point_raw = self._on_point  # what the proposal makes the agent do
            return resp

    class FusedAgent(agent_mod.Agent):
        """Frames split inside the read loop; point frames go straight to ``point_raw``.

        Stand-in for the A/B: it handles 1-2 byte length prefixes only (all these
        frames); the real change must keep the splitter's long-frame path.
        """

        def run(self) -> int:
            read, dispatch, rest = self._read, self._dispatch, b""
            while True:
                chunk = read(1 << 18)
                if not chunk:
                    self.flush()
                    return 0
                data = rest + chunk if rest else chunk
                n, pos = len(data), 0
                on_point = self._point_raw
                while pos < n:
                    b = data[pos]
                    if b < 0x80:
                        s, e = pos + 1, pos + 1 + b
                    elif pos + 1 < n and data[pos + 1] < 0x80:
                        s = pos + 2
                        e = s + ((b & 0x7F) | (data[pos + 1] << 7))
                    else:
                        break
                    if e > n:
                        break
                    # Request.point tag (0x8a 0x01), then a 2-byte point length: the common case.
                    if on_point is not None and data[s] == 0x8A and data[s + 1] == 0x01 and data[s + 2] >= 0x80 > data[s + 3]:
                        on_point(data[s + 4 : e])
                    else:
                        dispatch(data[s:e])
                        on_point = self._point_raw
                    pos = e
                rest = data[pos:]
                self.flush()

    chunks = list(Workload(points, groups).frames(chunk_bytes=1 << 18))
    init = encode_frame(pb.Request(init=pb.InitRequest(options=ALERT_OPTIONS)).SerializeToString())
    Agent = agent_mod.Agent
    variants = [
        ("current udf/ code", FrameSplitter, AlertStateHandler, Agent),
        ("FrameSplitter.feed: 2-byte prefix inline", InlineSplitter, AlertStateHandler, Agent),
        ("closure called directly (no point_raw trampoline)", FrameSplitter, DirectHandler, Agent),
        ("agent loop splits frames itself, point frames straight to the closure", FrameSplitter, DirectHandler, FusedAgent),
    ]
    times: Dict[str, List[float]] = {v[0]: [] for v in variants}
    original = getattr(agent_mod, "FrameSplitter")
    try:
        for rep in range(repeats):
            # Rotate the order so no variant always runs first (or after the same one).
            for name, splitter, handler, agent_cls in variants[rep % len(variants):] + variants[: rep % len(variants)]:
                setattr(agent_mod, "FrameSplitter", splitter)  # the agent's run() looks it up there
                it = iter([init] + chunks)
                agent = agent_cls(handler, lambda n: next(it, b""), lambda d: None)
                t0 = time.thread_time()  # this thread's CPU: other processes' load does not count
                status = agent.run()
                times[name].append((time.thread_time() - t0) / points * 1e6)
                if status != 0:
                    raise RuntimeError(f"{name}: agent failed: {agent.failed}")
    finally:
        setattr(agent_mod, "FrameSplitter", original)
    import statistics

    return [{"variant": name, "us": round(statistics.median(v), 3)} for name, v in times.items()]


def transport_ab(requests_n: int = 2_000, repeats: int = 3) -> List[Dict[str, object]]:
    """CPU per delivery POST: the bridge's Transport against lighter clients, same receiver.

    Timed by this thread's CPU clock, variants interleaved; the receiver runs in
    its own process. ``requests, trust_env=True`` is what ``Transport`` did before
    the fix recorded in the findings.
    """
    import statistics

    import requests
    import urllib3

    from bridge.targets.base import HttpRequest
    from bridge.transport import Transport

    from .bridge_load import FastReceiver, make_bodies

    receiver = FastReceiver()
    try:
        url = receiver.url + "/alerts"
        bodies = make_bodies(requests_n, 1_000)
        transport = Transport(timeout=10)
        plain = requests.Session()  # trust_env=True: the requests default
        plain.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=8, max_retries=0))
        pool = urllib3.PoolManager(maxsize=8, retries=False)
        headers = {"Content-Type": "application/json"}

        def via_transport(body: bytes) -> None:
            transport.send(HttpRequest("POST", url, headers, body))

        def via_requests(body: bytes) -> None:
            with plain.request("POST", url, headers=headers, data=body, timeout=10, allow_redirects=False,
                               stream=True) as resp:
                resp.raw.read()

        def via_urllib3(body: bytes) -> None:
            resp = pool.request("POST", url, body=body, headers=headers, timeout=10, redirect=False,
                                preload_content=False)
            resp.read()
            resp.release_conn()

        variants = [
            ("bridge Transport.send (urllib3 pool)", via_transport),
            ("requests session, trust_env=True (requests' default)", via_requests),
            ("urllib3 PoolManager.request, preload_content=False", via_urllib3),
        ]
        times: Dict[str, List[float]] = {name: [] for name, _ in variants}
        for rep in range(repeats):
            for name, send in variants[rep % 3:] + variants[: rep % 3]:
                for body in bodies[:50]:
                    send(body)  # connections open, caches warm
                t0 = time.thread_time()
                for body in bodies:
                    send(body)
                times[name].append((time.thread_time() - t0) / len(bodies) * 1e6)
        transport.close()
        plain.close()
    finally:
        receiver.close()
    return [{"variant": name, "us": round(statistics.median(v), 1)} for name, v in times.items()]


_BRIDGE_WRAPPER = textwrap.dedent(
    """
    # Runs `kapacitor-oncall-bridge ARGS` with a cProfile profiler in every thread;
    # at exit the merged profile goes to argv[1].
    import atexit, cProfile, pstats, runpy, sys, threading, time

    OUT = sys.argv[1]
    profiles = []

    def _profile_this_thread(*_args):
        p = cProfile.Profile(time.thread_time)  # CPU of this thread: blocking waits cost nothing
        profiles.append(p)
        p.enable()  # replaces this hook as the thread's profile function

    def _dump():
        merged = None
        for p in profiles:
            p.disable()
            try:
                merged = pstats.Stats(p) if merged is None else merged.add(p)
            except TypeError:  # a profiler that saw nothing
                pass
        if merged is not None:
            merged.dump_stats(OUT)

    threading.setprofile(_profile_this_thread)
    _profile_this_thread()
    atexit.register(_dump)
    sys.argv = ["kapacitor-oncall-bridge"] + sys.argv[2:]
    try:
        runpy.run_module("bridge", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    """
)


def _run_profiled_bridge(
    workdir: Path, out: Path, config_text: str, port: int, work: Callable[[], str], name: str
) -> str:
    """Start the bridge under the profiling wrapper, run ``work``, stop it (SIGTERM); ``work``'s summary."""
    import subprocess

    import requests

    wrapper = workdir / "wrapper.py"
    wrapper.write_text(_BRIDGE_WRAPPER)
    config = workdir / f"{name}.toml"
    config.write_text(
        config_text.replace("[server]\n", f'[server]\nlisten = "127.0.0.1:{port}"\n').replace(
            "[store]\n", f'[store]\npath = "{workdir / "bridge.db"}"\n'
        )
    )
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [PYTHON, str(wrapper), str(out), "serve", "--config", str(config), "--log-level", "warning"],
            env=repo_env(),
            cwd=str(workdir),
            stdout=log_file,
            stderr=log_file,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("profiled bridge did not start: " + log_path.read_text()[-2000:])
                time.sleep(0.05)
            return work()
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def profile_bridge(alerts: int = 3_000, ids: int = 1_000, log: Callable[[str], None] = print) -> List[Dict[str, object]]:
    """Profile the bridge's accept path, then its drain, as two separate runs on one store.

    Accept: the target is throttled, so the profile holds parsing, validation and the
    group commit only. Drain: the bridge restarts with ``rate_limit = "off"`` and
    delivers the queue to the fast receiver. Every thread is profiled on its own
    CPU clock (``time.thread_time``): time blocked in epoll, queue waits, socket
    reads or fsync does not count, so the tables show CPU hot spots only.
    """
    import shutil

    from .bridge_load import TARGET, FastReceiver, _config, make_bodies, post_all

    sys.path.insert(0, str(REPO_ROOT))
    from tests.bridge.harness import free_port

    workdir = WORK_DIR / "bridge-profile"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    receiver = FastReceiver()
    results: List[Dict[str, object]] = []
    try:
        port = free_port()

        def accept() -> str:
            secs, _lat, statuses = post_all(port, TARGET, make_bodies(alerts, ids))
            return f"{statuses.get(202, 0):,} of {alerts:,} alerts accepted in {secs:.2f}s"

        def drain() -> str:
            t0 = time.monotonic()
            deadline = t0 + 300
            while receiver.stats()["count"] < alerts - 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            return f"{receiver.stats()['count']:,} alerts delivered in {time.monotonic() - t0:.2f}s"

        phases = [
            ("accept", _config(receiver.url, throttled=True), accept,
             f"accept path: {alerts:,} alerts over {ids:,} ids, 50 clients, delivery throttled"),
            ("drain", _config(receiver.url, throttled=False), drain,
             f"drain: the same {alerts:,} alerts delivered to the fast receiver, rate_limit off"),
        ]
        for name, config_text, work, what in phases:
            out = workdir / f"{name}.prof"
            summary = _run_profiled_bridge(workdir, out, config_text, port, work, name)
            log(f"  profiled bridge {name}: {summary}")
            if not out.exists():
                raise RuntimeError(f"the bridge wrote no {name} profile")
            stats = pstats.Stats(str(out))
            total = stats.total_tt  # type: ignore[attr-defined]
            rows = top_table(stats, 14)
            text = _render(rows, total, f"bridge {what} ({summary}; cProfile in every thread, each on its CPU clock)")
            _save(f"bridge-{name}", text, stats)
            results.append({"what": f"bridge-{name}", "rows": rows, "total_s": total, "text": text})
    finally:
        receiver.close()
    return results


def _save(what: str, text: str, stats: pstats.Stats) -> None:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(40)
    (WORK_DIR / f"profile-{what}.txt").write_text(text + "\n\n" + buf.getvalue(), encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["udf", "mirror", "bridge", "ab", "transport"])
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--groups", type=int, default=100)
    p.add_argument("--alerts", type=int, default=10_000)
    p.add_argument("--ids", type=int, default=1_000)
    args = p.parse_args(argv)
    if args.what == "transport":
        for row in transport_ab():
            print(f"{row['us']:8.1f} µs CPU/request  {row['variant']}")
        return 0
    if args.what == "ab":
        for row in udf_ab(args.points, args.groups):
            print(f"{row['us']:8.3f} µs/point  {row['variant']}")
        return 0
    if args.what == "bridge":
        for res in profile_bridge(args.alerts, args.ids):
            print(res["text"])
        return 0
    res = profile_udf("alert-state" if args.what == "udf" else "mirror", args.points, args.groups)
    print(res["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
