"""Storm + crash, as a test helper and as a one-command soak with a ledger.

A storm posts ``alerts`` Kapacitor events over ``ids`` alert ids (each id walks
through trigger, repeat, escalate and recover steps) to a bridge subprocess
whose only target is a local receiver that fails ``fail_ratio`` of the requests
with 500/503/429 (some 429s with ``Retry-After``). Meanwhile the bridge is
``kill -9``'ed ``kills`` times at random moments and restarted at once. Then the
queue drains and the books are balanced:

* every event answered 202 (*accepted*) reached the receiver at least once
  (*delivered*), or is a dead letter the operator can see (*dead-lettered*);
* per id, the receiver saw the events in the order the bridge accepted them;
* per id, the receiver's last level is the last level accepted;
* deliveries beyond the first of an event are *duplicates* (at-least-once):
  counted, and a small fraction;
* every stored row is in a final state, and every delivered body is
  byte-for-byte the event that was posted.

Posters behave like Kapacitor per id (one request in flight per id, in order)
but, unlike Kapacitor, re-post an event whose answer was lost (connection
refused or reset while the bridge was down), so "the last level sent" is
always known; such a re-post can store the event twice, which shows up as a
duplicate, never as a loss.

Run the soak::

    python -m tests.reliability.soak --kills 200 --alerts 50000 --ids 2000 --ledger soak.json
    python -m tests.reliability.soak --backend postgres --replicas 3 --kills 50 --alerts 10000 --ids 1000

It writes the ledger as JSON to ``--ledger`` and as markdown next to it
(``.md``), prints the markdown, and exits 1 when the books do not balance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Counter as CounterT, Dict, List, Optional, Sequence, Set, Tuple

from tests.bridge.harness import BridgeProcess, Receiver, Recorded, Reply, kapacitor_event

__all__ = ["Ledger", "StormConfig", "plan_events", "post_many", "run_storm"]

ALERTING = ("INFO", "WARNING", "CRITICAL")


@dataclass(frozen=True)
class StormConfig:
    """Knobs of one storm; the defaults are the normal test run."""

    alerts: int = 10_000
    ids: int = 1_000
    kills: int = 5
    fail_ratio: float = 0.30
    posters: int = 24
    workers: int = 16
    seed: int = 20240602
    #: Seconds between a restart becoming healthy and the next kill (uniform).
    kill_gap: Tuple[float, float] = (0.2, 1.6)
    repeat_interval: str = "0s"
    backoff_initial: str = "20ms"
    backoff_max: str = "300ms"
    max_age: str = "24h"
    #: Give up re-posting one event after this long (the bridge never came back).
    post_deadline: float = 60.0
    drain_timeout: float = 120.0
    #: Rows the bridge re-sends after crashes, above this fraction of accepted events, fail the run.
    max_duplicate_fraction: float = 0.02


@dataclass
class Ledger:
    """The books of one storm; ``balanced`` says whether they add up."""

    alerts_planned: int = 0
    ids: int = 0
    kills: int = 0
    accepted: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    suppressed: int = 0
    #: Events outage coalescing replaced by a newer one of their id (never the id's last).
    superseded: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicate_fraction: float = 0.0
    duplicates_from_reposts: int = 0
    duplicates_from_redelivery: int = 0
    delivered_unacknowledged: int = 0
    refused_by_bridge: int = 0
    gave_up: int = 0
    reposted_events: int = 0
    repost_attempts: int = 0
    receiver_requests: int = 0
    receiver_failures_injected: int = 0
    truncated_requests: int = 0
    order_violations: int = 0
    wrong_suppressions: int = 0
    final_state_mismatches: int = 0
    corrupted_bodies: int = 0
    stored_not_final: int = 0
    post_seconds: float = 0.0
    drain_seconds: float = 0.0
    total_seconds: float = 0.0
    accept_rate_per_second: float = 0.0
    bridge_counts: Dict[str, int] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    balanced: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def to_markdown(self) -> str:
        rows = [
            ("alerts planned", self.alerts_planned),
            ("alert ids", self.ids),
            ("kill -9 + restart", self.kills),
            ("accepted (202)", self.accepted),
            ("delivered (≥ 1 × 2xx at the receiver)", self.delivered),
            ("dead-lettered", self.dead_lettered),
            ("suppressed (repeat_interval)", self.suppressed),
            ("superseded (coalesced)", self.superseded),
            ("**lost** (accepted − delivered − dead − suppressed − superseded)", self.lost),
            ("duplicates (extra 2xx deliveries)", f"{self.duplicates} ({self.duplicate_fraction:.2%})"),
            ("… of which: event stored twice (202 lost, re-posted)", self.duplicates_from_reposts),
            ("… of which: row re-sent after a crash (sent, not yet marked)", self.duplicates_from_redelivery),
            ("delivered, never acknowledged (202 lost, not re-stored)", self.delivered_unacknowledged),
            ("events re-posted after a lost answer / attempts", f"{self.reposted_events} / {self.repost_attempts}"),
            ("refused by the bridge (4xx)", self.refused_by_bridge),
            ("given up by the poster", self.gave_up),
            ("receiver requests / failures injected", f"{self.receiver_requests} / {self.receiver_failures_injected}"),
            ("requests cut off by a kill (refused 400)", self.truncated_requests),
            ("per-id order violations", self.order_violations),
            ("suppressed level changes", self.wrong_suppressions),
            ("final-state mismatches", self.final_state_mismatches),
            ("corrupted bodies", self.corrupted_bodies),
            ("rows not in a final state", self.stored_not_final),
            ("posting / draining / total seconds", f"{self.post_seconds:.1f} / {self.drain_seconds:.1f} / {self.total_seconds:.1f}"),
            ("bridge outbox counts", ", ".join(f"{k} {v}" for k, v in sorted(self.bridge_counts.items()))),
            ("**balanced**", "yes" if self.balanced else "NO"),
        ]
        lines = ["| ledger | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        if self.problems:
            lines += ["", "Problems:"] + [f"- {p}" for p in self.problems[:50]]
        return "\n".join(lines) + "\n"


# -- the plan: which event for which id, in which order ----------------------------------


@dataclass(frozen=True)
class Planned:
    n: int
    id: str
    level: str
    previous: str


def plan_events(alerts: int, ids: int, seed: int) -> List[Planned]:
    """Random trigger / repeat / escalate / recover walks, interleaved over ``ids`` ids."""
    rng = random.Random(seed)
    state: Dict[str, str] = {}
    out: List[Planned] = []
    names = [f"cpu:host=h{i:05d}" for i in range(ids)]
    for n in range(alerts):
        ident = names[rng.randrange(ids)]
        prev = state.get(ident, "OK")
        roll = rng.random()
        if prev == "OK":
            level = rng.choice(ALERTING) if roll < 0.9 else "OK"  # mostly trigger, sometimes a stray OK
        elif roll < 0.4:
            level = prev  # repeat
        elif roll < 0.6:
            level = rng.choice([lv for lv in ALERTING if lv != prev])  # escalate / de-escalate
        else:
            level = "OK"  # recover
        state[ident] = level
        out.append(Planned(n, ident, level, prev))
    return out


def _body(p: Planned) -> bytes:
    event = kapacitor_event(p.id, p.level, previous_level=p.previous, details=f"n={p.n}")
    return json.dumps(event, separators=(",", ":")).encode()


# -- the flaky platform -----------------------------------------------------------------------


class FlakyPlatform:
    """Answers ``fail_ratio`` of requests with 500/503/429 (a third of the 429s with Retry-After)."""

    def __init__(self, fail_ratio: float, seed: int) -> None:
        self.fail_ratio = fail_ratio
        self._rng = random.Random(seed)
        self.injected = 0
        self.truncated = 0
        self.receiver = Receiver(handler=self._answer)

    def _answer(self, rec: Recorded) -> Any:
        # Called under the receiver's lock: the RNG needs no lock of its own.
        declared = rec.header("Content-Length")
        if declared is not None and len(rec.body) < int(declared):
            # The bridge died mid-request: the platform never got a whole body.
            self.truncated += 1
            return Reply(400, b'{"message":"truncated body"}')
        if self._rng.random() >= self.fail_ratio:
            return 200
        self.injected += 1
        status = self._rng.choice((500, 503, 429))
        if status == 429 and self._rng.random() < 1 / 3:
            return Reply(429, b'{"message":"slow down"}', {"Retry-After": self._rng.choice(("0", "1"))})
        return Reply(status, b'{"message":"try again"}')

    def deliveries(self) -> List[Tuple[str, str, int, bytes]]:
        """(id, level, n, body) of every 2xx-answered request, in arrival order."""
        out = []
        for rec in self.receiver.accepted():
            try:
                event = json.loads(rec.body)
                n = int(str(event["details"]).split("=", 1)[1])
                out.append((str(event["id"]), str(event["level"]), n, rec.body))
            except (ValueError, KeyError, IndexError, TypeError):
                out.append(("?", "?", -1, rec.body))
        return out


# -- posting like Kapacitor ----------------------------------------------------------------------


@dataclass
class PostResults:
    accepted: Dict[int, int] = field(default_factory=dict)  # n -> number of 202s
    ambiguous: Set[int] = field(default_factory=set)  # n whose answer was lost at least once
    refused: Dict[int, int] = field(default_factory=dict)  # n -> status
    gave_up: Set[int] = field(default_factory=set)
    reposts: int = 0


class _Http:
    """A minimal keep-alive HTTP/1.1 client on asyncio: cheap, so the bridge gets the CPU."""

    def __init__(self, port: int, path: str, token: Optional[str] = None) -> None:
        self.port = port
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
        ).encode()
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def post(self, body: bytes) -> Optional[int]:
        """The status, or None when the answer was lost (refused, reset, timeout)."""
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 5
                )
            assert self.reader is not None and self.writer is not None
            self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 15)
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await asyncio.wait_for(self.reader.readexactly(length), 15)
            if close:
                self.close()
            return status
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
            self.close()
            return None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _post_share(port: int, events: Sequence[Planned], bodies: Dict[int, bytes], res: PostResults, cfg: StormConfig, stop: threading.Event) -> None:
    """One connection, one id at a time: the next event of an id waits for the previous answer."""
    http = _Http(port, "/alerts/hook")
    try:
        for p in events:
            deadline = time.monotonic() + cfg.post_deadline
            while not stop.is_set():
                status = await http.post(bodies[p.n])
                if status == 202:
                    res.accepted[p.n] = res.accepted.get(p.n, 0) + 1
                    break
                if status is None:
                    res.ambiguous.add(p.n)
                    res.reposts += 1
                elif status != 503:
                    res.refused[p.n] = status
                    break
                if time.monotonic() > deadline:
                    res.gave_up.add(p.n)
                    break
                await asyncio.sleep(0.02)
    finally:
        http.close()


def post_many(port: int, target: str, bodies: Sequence[bytes], concurrency: int = 16, token: Optional[str] = None) -> List[Optional[int]]:
    """POST every body once (``concurrency`` connections); the statuses, None for a lost answer."""
    statuses: List[Optional[int]] = [None] * len(bodies)

    async def lane(k: int) -> None:
        http = _Http(port, f"/alerts/{target}", token)
        try:
            for i in range(k, len(bodies), concurrency):
                statuses[i] = await http.post(bodies[i])
        finally:
            http.close()

    async def run() -> None:
        await asyncio.gather(*(lane(k) for k in range(concurrency)))

    asyncio.run(run())
    return statuses


async def _post_all(port: int, shares: List[List[Planned]], bodies: Dict[int, bytes], res: PostResults, cfg: StormConfig, stop: threading.Event) -> None:
    await asyncio.gather(*(_post_share(port, share, bodies, res, cfg, stop) for share in shares))


def _killer(bridge: BridgeProcess, cfg: StormConfig, rng: random.Random, done: List[int], errors: List[str], stop: threading.Event) -> None:
    try:
        for _ in range(cfg.kills):
            gap = rng.uniform(*cfg.kill_gap)
            if rng.random() < 0.15:
                gap = rng.uniform(0.0, 0.05)  # right after start-up: during crash recovery
            if stop.wait(gap):
                return
            bridge.kill9()
            bridge.start(wait=True, timeout=30)
            done[0] += 1
    except Exception as exc:  # noqa: BLE001 - reported in the ledger
        errors.append(f"killer: {type(exc).__name__}: {exc}")


# -- the run ------------------------------------------------------------------------------------------


def storm_config_text(url: str, cfg: StormConfig) -> str:
    return f"""
[store]
keep_delivered = 1000000000

[delivery]
timeout = "2s"
backoff_initial = "{cfg.backoff_initial}"
backoff_max = "{cfg.backoff_max}"
max_age = "{cfg.max_age}"
repeat_interval = "{cfg.repeat_interval}"
workers = {cfg.workers}
# The storm accounts for every accepted event, so history is delivered, not coalesced.
coalesce = "off"

[[target]]
name = "hook"
type = "webhook"
url = "{url}/hook"
"""


def _stored_rows(db: Path) -> List[Tuple[str, int, bytes]]:
    """(state, n, body) of every outbox row, read-only after the bridge stopped."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT state, body FROM outbox WHERE synthetic = 0").fetchall()
    finally:
        conn.close()
    out = []
    for state, body in rows:
        try:
            n = int(str(json.loads(body)["details"]).split("=", 1)[1])
        except (ValueError, KeyError, IndexError, TypeError):
            n = -1
        out.append((str(state), n, bytes(body)))
    return out


def run_storm(cfg: StormConfig, workdir: Optional[Path] = None, log: Any = None) -> Ledger:
    """Run one storm and return its ledger (never raises for a failed check: see ``problems``)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
            return run_storm(cfg, Path(tmp), log)
    say = log or (lambda msg: None)
    started = time.monotonic()
    plan = plan_events(cfg.alerts, cfg.ids, cfg.seed)
    bodies = {p.n: _body(p) for p in plan}
    platform = FlakyPlatform(cfg.fail_ratio, cfg.seed + 1)
    bridge = BridgeProcess(storm_config_text(platform.receiver.url, cfg), workdir)
    ledger = Ledger(alerts_planned=cfg.alerts, ids=cfg.ids)
    res = PostResults()
    stop = threading.Event()
    killer_errors: List[str] = []
    kills = [0]
    try:
        bridge.start(timeout=30)
        # Each poster owns a slice of the ids, so an id's events go out one at a time, in order.
        shares: List[List[Planned]] = [[] for _ in range(cfg.posters)]
        for p in plan:
            shares[zlib.crc32(p.id.encode()) % cfg.posters].append(p)
        killer = threading.Thread(
            target=_killer, args=(bridge, cfg, random.Random(cfg.seed + 2), kills, killer_errors, stop), daemon=True
        )
        killer.start()
        post_started = time.monotonic()
        asyncio.run(_post_all(bridge.port, shares, bodies, res, cfg, stop))
        ledger.post_seconds = time.monotonic() - post_started
        say(f"posted {len(res.accepted)} accepted in {ledger.post_seconds:.1f}s; kills so far {kills[0]}")
        killer.join()
        if not bridge.running:
            bridge.start(timeout=30)
        drain_started = time.monotonic()

        def drained() -> bool:
            _status, health = bridge.healthz()
            queue = health.get("queue", {})
            return not queue.get("pending", 1) and not queue.get("inflight", 1)

        deadline = time.monotonic() + cfg.drain_timeout
        while time.monotonic() < deadline and not drained():
            time.sleep(0.25)
        ledger.drain_seconds = time.monotonic() - drain_started
        bridge.stop()
        counts = bridge.cli("queue", "--json")
        if counts.returncode == 0:
            table = json.loads(counts.stdout)
            ledger.bridge_counts = {k: int(v) for k, v in table.get("hook", {}).items()}
        rows = _stored_rows(bridge.db_path)
    finally:
        stop.set()
        bridge.close()
        platform.receiver.stop()

    ledger.kills = kills[0]
    ledger.problems.extend(killer_errors)
    if ledger.kills < cfg.kills:
        ledger.problems.append(f"only {ledger.kills} of {cfg.kills} kills happened")
    _balance(ledger, cfg, plan, bodies, res, platform, rows)
    ledger.total_seconds = time.monotonic() - started
    ledger.accept_rate_per_second = round(ledger.accepted / ledger.post_seconds, 1) if ledger.post_seconds else 0.0
    return ledger


def _balance(
    ledger: Ledger,
    cfg: StormConfig,
    plan: List[Planned],
    bodies: Dict[int, bytes],
    res: PostResults,
    platform: FlakyPlatform,
    rows: List[Tuple[str, int, bytes]],
) -> None:
    by_n = {p.n: p for p in plan}
    accepted = set(res.accepted)
    ledger.accepted = len(accepted)
    ledger.refused_by_bridge = len(res.refused)
    ledger.gave_up = len(res.gave_up)
    ledger.reposted_events = len(res.ambiguous)
    ledger.repost_attempts = res.reposts
    ledger.receiver_requests = len(platform.receiver.requests)
    ledger.receiver_failures_injected = platform.injected
    ledger.truncated_requests = platform.truncated
    problems = ledger.problems
    if res.refused:
        problems.append(f"bridge refused {len(res.refused)} valid events, e.g. {sorted(res.refused.items())[:5]}")
    if res.gave_up:
        problems.append(f"{len(res.gave_up)} events never got an answer within {cfg.post_deadline}s")

    deliveries = platform.deliveries()
    seen: CounterT[int] = Counter()
    per_id: Dict[str, List[int]] = defaultdict(list)
    for ident, level, n, body in deliveries:
        p = by_n.get(n)
        if p is None or json.loads(body) != json.loads(bodies[n]) or (ident, level) != (p.id, p.level):
            ledger.corrupted_bodies += 1
            if ledger.corrupted_bodies <= 3:
                problems.append(f"corrupted delivery: {body[:300]!r}")
            continue
        seen[n] += 1
        per_id[ident].append(n)
    delivered = set(seen)
    ledger.delivered = len(delivered & accepted)
    ledger.delivered_unacknowledged = len(delivered - accepted)
    ledger.duplicates = sum(c - 1 for c in seen.values())
    ledger.duplicate_fraction = ledger.duplicates / max(1, ledger.accepted)

    stored = Counter(n for _state, n, _body in rows)
    # An event stored twice is delivered twice by design; count those apart from re-sends.
    ledger.duplicates_from_reposts = sum(min(seen[n], c) - 1 for n, c in stored.items() if c > 1 and seen[n] > 1)
    ledger.duplicates_from_redelivery = ledger.duplicates - ledger.duplicates_from_reposts
    state_of: Dict[int, str] = {}
    for state, n, _body in rows:
        # A re-post may have stored an event twice; the most final state wins.
        if state_of.get(n) not in ("delivered",):
            state_of[n] = state
    not_final = [n for n, s in state_of.items() if s in ("pending", "inflight")]
    ledger.stored_not_final = len(not_final)
    dead = {n for n, s in state_of.items() if s == "dead"} - delivered
    suppressed = {n for n, s in state_of.items() if s == "suppressed"} - delivered
    ledger.dead_lettered = len(dead & accepted)
    ledger.suppressed = len(suppressed & accepted)
    superseded = {n for n, s in state_of.items() if s == "superseded"} - delivered
    ledger.superseded = len(superseded & accepted)
    missing_rows = accepted - set(state_of)
    lost = accepted - delivered - dead - suppressed - superseded
    ledger.lost = len(lost)
    if missing_rows:
        problems.append(f"{len(missing_rows)} accepted events have no outbox row, e.g. {sorted(missing_rows)[:10]}")
    if lost:
        problems.append(f"{len(lost)} accepted events were lost, e.g. {sorted(lost)[:10]}")
    if not_final:
        problems.append(f"{len(not_final)} rows still pending/inflight after the drain")
    if ledger.corrupted_bodies:
        problems.append(f"{ledger.corrupted_bodies} delivered bodies differ from what was posted")

    # Order: per id, event numbers never go backwards (a duplicate may repeat the last one).
    for ident, ns in per_id.items():
        bad = [(a, b) for a, b in zip(ns, ns[1:]) if b < a]
        if bad:
            ledger.order_violations += 1
            if ledger.order_violations <= 5:
                problems.append(f"order violated for {ident}: {bad[:3]} (sequence {ns[:20]})")
    # A suppressed event must repeat the level last forwarded for its id: suppressing a
    # level change (worst: a recovery) would leave an incident open.
    forwarded: Dict[str, str] = {}
    for p in plan:
        if p.n not in accepted or p.n in superseded:
            continue
        if p.n in suppressed:
            if forwarded.get(p.id) != p.level:
                ledger.wrong_suppressions += 1
                if ledger.wrong_suppressions <= 5:
                    problems.append(f"{p.id} n={p.n} {p.level} suppressed after {forwarded.get(p.id)}")
        else:
            forwarded[p.id] = p.level
    # Final state: the last level the receiver saw is the last level accepted.
    last_accepted: Dict[str, Planned] = {}
    for p in plan:
        if p.n in accepted:
            last_accepted[p.id] = p
    for ident, p in last_accepted.items():
        got_ns = per_id.get(ident)
        got = by_n[got_ns[-1]].level if got_ns else None
        if got != p.level:
            ledger.final_state_mismatches += 1
            if ledger.final_state_mismatches <= 5:
                problems.append(f"final state of {ident}: receiver has {got}, last accepted {p.level} (n={p.n})")
    # Duplicates the bridge makes itself: a crash between a 2xx and its commit re-sends what
    # the workers had in flight and the finished sends whose outcome was not durable yet. The
    # dispatcher guarantees fewer than 3 x workers (at most 2 x workers outcomes wait for their
    # commit: bridge/outcomes.py); with the store keeping up, 2 x workers per crash holds.
    per_kill = 2 * cfg.workers
    if ledger.duplicates_from_redelivery > max(1, ledger.kills) * per_kill:
        problems.append(
            f"{ledger.duplicates_from_redelivery} re-sent rows after {ledger.kills} crashes "
            f"(more than {per_kill} per crash)"
        )
    redelivered = ledger.duplicates_from_redelivery / max(1, ledger.accepted)
    if redelivered > cfg.max_duplicate_fraction:
        problems.append(f"re-sent rows are {redelivered:.2%} of accepted (limit {cfg.max_duplicate_fraction:.0%})")
    # Duplicates the poster causes by re-posting an event whose 202 was lost: one per such event.
    if ledger.duplicates_from_reposts > ledger.reposted_events:
        problems.append(f"{ledger.duplicates_from_reposts} re-post duplicates for {ledger.reposted_events} re-posted events")
    if ledger.accepted == 0:
        problems.append("nothing was accepted")
    ledger.balanced = (
        not problems
        and ledger.accepted == ledger.delivered + ledger.dead_lettered + ledger.suppressed + ledger.superseded
        and ledger.order_violations == 0
        and ledger.wrong_suppressions == 0
        and ledger.final_state_mismatches == 0
    )


# -- command line ----------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.soak",
        description="Storm the bridge while kill -9'ing it; write a ledger that must balance.",
    )
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--alerts", type=int, default=50_000)
    parser.add_argument("--ids", type=int, default=2_000)
    parser.add_argument("--ledger", type=Path, default=Path("soak-ledger.json"))
    parser.add_argument("--fail-ratio", type=float, default=0.30)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--posters", type=int, default=24)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the bridge's files here")
    parser.add_argument("--repeat-interval", default="0s", help="bridge repeat_interval (suppressed repeats are booked)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres: replicas on a private PostgreSQL server (killed at random, PostgreSQL crashed once)")
    parser.add_argument("--replicas", type=int, default=3, help="with --backend postgres: serve processes")
    parser.add_argument("--rate-limit", default="300/1s", help="with --backend postgres: aggregate limit, count/seconds")
    args = parser.parse_args(argv)
    if args.kills < 0 or args.alerts < 1 or args.ids < 1:
        parser.error("--kills >= 0, --alerts >= 1, --ids >= 1")
    # Spread the kills over the storm: about one per (alerts / kills) posts, at least 0.2 s apart.
    expected_post_seconds = args.alerts / 1500.0
    gap_high = max(0.4, 2 * expected_post_seconds / max(1, args.kills))
    cfg = StormConfig(
        alerts=args.alerts,
        ids=args.ids,
        kills=args.kills,
        fail_ratio=args.fail_ratio,
        posters=args.posters,
        seed=args.seed,
        kill_gap=(0.2, gap_high),
        repeat_interval=args.repeat_interval,
        post_deadline=120.0,
        drain_timeout=600.0,
    )

    def say(msg: str) -> None:
        print(f"[soak] {msg}", file=sys.stderr, flush=True)

    say(f"seed {cfg.seed}: {cfg.alerts} alerts over {cfg.ids} ids, {cfg.kills} kills, fail ratio {cfg.fail_ratio}")
    facts: Dict[str, Any] = {}
    if args.backend == "postgres":
        from .replicas import ReplicaStorm, run_replica_storm

        count, _, seconds = args.rate_limit.partition("/")
        rs = ReplicaStorm(replicas=args.replicas, rate_limit=(int(count), float(seconds.rstrip("s") or 1)))
        with tempfile.TemporaryDirectory(prefix="soak-pg-") as tmp:
            ledger, facts = run_replica_storm(cfg, rs, args.workdir or Path(tmp), log=say)
    else:
        ledger = run_storm(cfg, args.workdir, log=say)
    args.ledger.write_text(ledger.to_json() + "\n")
    markdown = args.ledger.with_suffix(".md")
    extra = "".join(f"| {k} | {v} |\n" for k, v in sorted(facts.items()))
    text = ledger.to_markdown() + (f"\n| replicas ({args.backend}) | value |\n|---|---|\n{extra}" if facts else "")
    markdown.write_text(f"# Soak ledger (seed {cfg.seed}, {args.backend})\n\n" + text)
    print(text)
    say(f"ledger written to {args.ledger} and {markdown}")
    return 0 if ledger.balanced else 1


if __name__ == "__main__":
    sys.exit(main())
