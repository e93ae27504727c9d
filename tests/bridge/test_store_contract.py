"""The store contract, run against every backend (SQLite and a real PostgreSQL).

One suite, parametrised: whatever delivery, the server and the ledger rely on must
hold for :class:`bridge.outbox.Outbox` and :class:`bridge.pg.PgOutbox` alike.
Backend-specific behaviour (files, schema refusal, replicas) is tested beside each.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from bridge.ledger import CLOSED_KEEP
from bridge.backend import Store
from bridge.coalesce import BACKLOG_AGE
from bridge.errors import StoreError
from bridge.store import Head, Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


Factory = Callable[[], Store]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Factory]:
    """``make_store()`` opens a store on this test's file or database (again after a close)."""
    opened: List[Store] = []
    if request.param == "sqlite":
        from bridge.outbox import Outbox

        path = str(tmp_path / "o.db")

        def make() -> Store:
            box = Outbox(path, clock=clock)
            box.open()
            opened.append(box)
            return box
    else:
        from bridge.pg import PgOutbox

        dsn = request.getfixturevalue("pg_server").create_database("contract")

        def make() -> Store:
            box = PgOutbox(dsn, replica_id="r1", clock=clock, lease=5.0)
            box.open()
            opened.append(box)
            return box

    yield make
    for box in opened:
        box.close()


@pytest.fixture
def box(make_store: Factory) -> Store:
    return make_store()


def body(key: str, level: str, n: int = 0) -> bytes:
    return f'{{"id":"{key}","level":"{level}","time":"2026-01-01T00:00:{n:02d}Z"}}'.encode()


def put(box: Store, key: str, level: str = "CRITICAL", target: str = "t", n: int = 0, **kw: Any) -> int:
    return box.enqueue(target, key, level, body(key, level, n), **kw).result(10)


def take(box: Store, clock: Clock, target: str = "t") -> Optional[Head]:
    head, _due = box.peek(target, clock())
    if head is not None:
        assert box.claim(head)
    return head


def drain(box: Store, clock: Clock, target: str = "t") -> List[Head]:
    heads: List[Head] = []
    while (head := take(box, clock, target)) is not None:
        heads.append(head)
    return heads


def deliver(box: Store, clock: Clock, key: str, level: str, target: str = "t", n: int = 0) -> Head:
    put(box, key, level, target, n)
    head = take(box, clock, target)
    assert head is not None and head.key == key
    box.finish(head, "delivered", attempts=1, status=202)
    return head


class TestAccept:
    def test_concurrent_enqueues_get_distinct_seqs(self, box: Store) -> None:
        """Many threads enqueue at once; every one gets its own durable seq."""
        seqs: List[int] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            for j in range(25):
                seq = put(box, f"k{i}-{j}", n=j)
                with lock:
                    seqs.append(seq)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(seqs)) == 200

    def test_synthetic_flag_stored(self, box: Store) -> None:
        """``synthetic=True`` marks the bridge's own events."""
        seq = box.enqueue("t", "a", "OK", b"{}", synthetic=True).result(10)
        row = box.load(seq)
        assert row is not None and row.synthetic and row.body == b"{}"

    def test_fan_out_rows_commit_together(self, box: Store, clock: Clock) -> None:
        """``also`` targets get the same event in the same commit: ``done`` has the first
        target's seq once every row is durable, and each target has its own ready head and
        auto-resolve timer."""
        from concurrent.futures import Future

        from bridge.outbox_ops import resolver

        future: "Future[int]" = Future()
        box.enqueue_with(resolver(future), "am", "k", "CRITICAL", body("k", "CRITICAL"), expire_after=60.0,
                         also=["am@2", "am@3"])
        seq = future.result(10)
        heads = {t: drain(box, clock, t) for t in ("am", "am@2", "am@3")}
        assert [h.seq for h in heads["am"]] == [seq]
        assert all(len(hs) == 1 and hs[0].key == "k" for hs in heads.values())
        assert len({hs[0].seq for hs in heads.values()}) == 3
        clock.now += 61
        fired = box.fire_expiries(lambda t, k, b, now: b'{"level":"OK"}', wait=True)
        assert sorted(t for _seq, t, _k in fired) == ["am", "am@2", "am@3"]

    def test_closed_store_refuses(self, make_store: Factory) -> None:
        """After close an enqueue fails with StoreError: never a silent drop."""
        box = make_store()
        box.close()
        with pytest.raises(StoreError):
            box.enqueue("t", "k", "CRITICAL", b"{}").result(10)


class TestDispatch:
    def test_only_head_of_key(self, box: Store, clock: Clock) -> None:
        """One row per key at a time, in seq order; other keys go in parallel."""
        a1, a2, b1 = put(box, "a", n=1), put(box, "a", "OK", n=2), put(box, "b")
        first = drain(box, clock)
        assert sorted(h.seq for h in first) == [a1, b1]
        head_a = next(h for h in first if h.key == "a")
        box.finish(head_a, "delivered", attempts=1)
        second = drain(box, clock)
        assert [h.seq for h in second] == [a2]

    def test_retry_waits_for_due_time(self, box: Store, clock: Clock) -> None:
        """A row put back with ``next_at`` is not ready before then; peek says when."""
        put(box, "a")
        head = take(box, clock)
        assert head is not None
        box.finish(head, "pending", attempts=1, next_at=clock.now + 30, error="boom", status=503)
        ready, due = box.peek("t", clock.now)
        assert ready is None and due == pytest.approx(clock.now + 30)
        clock.now += 31
        again = take(box, clock)
        assert again is not None and again.seq == head.seq
        row = box.load(head.seq)
        assert row is not None and row.attempts == 1 and row.last_status == 503

    def test_targets_are_separate(self, box: Store, clock: Clock) -> None:
        """Claims of one target never return another target's rows."""
        put(box, "a", target="t1")
        put(box, "a", target="t2")
        assert [h.target for h in drain(box, clock, "t1")] == ["t1"]
        assert [h.target for h in drain(box, clock, "t2")] == ["t2"]

    def test_inflight_back_to_pending_after_restart(self, make_store: Factory, clock: Clock) -> None:
        """A row claimed when the process stopped is delivered again after a restart."""
        box = make_store()
        seq = put(box, "a")
        assert take(box, clock) is not None
        box.close()
        again = make_store()
        head = take(again, clock)
        assert head is not None and head.seq == seq

    def test_retry_schedule_survives_restart(self, make_store: Factory, clock: Clock) -> None:
        """Attempts and next due time live in the store, not in memory."""
        box = make_store()
        put(box, "a")
        head = take(box, clock)
        assert head is not None
        box.finish(head, "pending", attempts=3, next_at=clock.now + 100)
        box.close()
        again = make_store()
        assert again.peek("t", clock.now)[0] is None
        clock.now += 101
        head = take(again, clock)
        assert head is not None
        row = again.load(head.seq)
        assert row is not None and row.attempts == 3

    def test_dead_and_replay(self, box: Store, clock: Clock) -> None:
        """Dead letters stay until replayed; replay filters by target and key."""
        for key in ("a", "b"):
            put(box, key)
        for head in drain(box, clock):
            box.finish(head, "dead", attempts=5, error="gone", status=410)
        assert box.stats().dead == {"t": 2}
        assert box.replay("t", "a").count == 1
        assert [h.key for h in drain(box, clock)] == ["a"]
        assert box.replay().count == 1

    def test_forwarded_memory_and_prune(self, box: Store, clock: Clock) -> None:
        """The last delivered level is remembered for repeat suppression, and forgotten by prune."""
        deliver(box, clock, "a", "CRITICAL")
        fwd = box.forwarded("t", "a")
        assert fwd is not None and fwd.level == "CRITICAL" and fwd.received_at == clock.now
        box.prune(0, forget_before=clock.now + 1, wait=True)
        assert box.forwarded("t", "a") is None

    def test_prune_keeps_dead(self, box: Store, clock: Clock) -> None:
        """Pruning bounds delivered history and never touches dead letters."""
        for i in range(5):
            deliver(box, clock, f"k{i}", "CRITICAL")
        put(box, "x")
        head = take(box, clock)
        assert head is not None
        box.finish(head, "dead", error="gone")
        box.prune(2, wait=True)
        assert box.stats().dead == {"t": 1}
        assert box.load(head.seq) is not None

    def test_prune_forgets_old_closed_incidents(self, box: Store, clock: Clock) -> None:
        """A closed incident is remembered for CLOSED_KEEP after its resolve was told, and longer
        while a dead letter of its id is on file (replay asks the ledger); open ones always stay."""
        for key in ("a", "b"):
            deliver(box, clock, key, "CRITICAL")
            deliver(box, clock, key, "OK", n=1)
        put(box, "b", "WARNING", n=2)
        head = take(box, clock)
        assert head is not None and head.key == "b"
        box.finish(head, "dead", error="gone")
        deliver(box, clock, "c", "CRITICAL")
        clock.now += CLOSED_KEEP - 10
        box.prune(100, wait=True)
        assert box.last_told("t", "a") is not None
        clock.now += 20
        box.prune(100, wait=True)
        assert box.last_told("t", "a") is None
        b = box.last_told("t", "b")
        assert b is not None and b.level == "OK"
        c = box.told("t", "c")
        assert c is not None and c.level == "CRITICAL"

    def test_stats(self, box: Store, clock: Clock) -> None:
        """Pending, in-flight and dead per target, and the oldest pending age."""
        put(box, "a")
        put(box, "b")
        assert take(box, clock) is not None
        clock.now += 5
        stats = box.stats()
        assert stats.total_pending == 2 and sum(stats.inflight.values()) == 1
        assert stats.oldest_pending_age == pytest.approx(5.0) and stats.writable
        assert box.targets_with_rows() == {"t"}
        assert box.probe()


class TestBatches:
    """``load_many`` and ``finish_many``: what the delivery engine uses, one call per batch."""

    @staticmethod
    def finish_all(box: Store, outcomes: List[Outcome]) -> List[Tuple[Outcome, Optional[BaseException]]]:
        reported: List[Tuple[Outcome, Optional[BaseException]]] = []
        settled = threading.Event()

        def done(o: Outcome, error: Optional[BaseException]) -> None:
            reported.append((o, error))
            if len(reported) == len(outcomes):
                settled.set()

        box.finish_many(outcomes, done)
        assert settled.wait(10), reported
        return reported

    def test_load_many_reads_claimed_rows(self, box: Store, clock: Clock) -> None:
        seqs = [put(box, f"k{i}", n=i) for i in range(5)]
        heads = drain(box, clock)
        rows = box.load_many([h.seq for h in heads] + [999_999])
        assert sorted(rows) == sorted(seqs)
        for head in heads:
            row = rows[head.seq]
            assert (row.key, row.level, row.attempts) == (head.key, head.level, 0)
            assert row.body == body(head.key, "CRITICAL", int(head.key[1:]))
        assert box.load_many([]) == {}

    def test_finish_many_records_every_outcome_and_frees_keys(self, box: Store, clock: Clock) -> None:
        """One call with several kinds of outcome: each is reported durable once, lands in the
        store as given, and the next row of each id becomes its head."""
        for key in ("a", "b", "c", "d", "e"):
            put(box, key, "CRITICAL", n=1)
            put(box, key, "OK", n=2)
        heads = {h.key: h for h in drain(box, clock)}
        assert sorted(heads) == ["a", "b", "c", "d", "e"]
        outcomes = [
            Outcome(heads["a"], "delivered", attempts=1, status=202),
            Outcome(heads["b"], "dead", attempts=2, error="HTTP 400: bad", status=400),
            Outcome(heads["c"], "pending", attempts=1, next_at=clock.now + 30, error="HTTP 503", status=503),
            Outcome(heads["d"], "suppressed"),
            Outcome(heads["e"], "silenced"),
        ]
        reported = self.finish_all(box, outcomes)
        assert sorted(o.head.key for o, _e in reported) == ["a", "b", "c", "d", "e"]
        assert all(e is None for _o, e in reported)
        rows = box.load_many([h.seq for h in heads.values()])
        got = {rows[h.seq].key: (rows[h.seq].state, rows[h.seq].attempts, rows[h.seq].last_status) for h in heads.values()}
        assert got == {"a": ("delivered", 1, 202), "b": ("dead", 2, 400), "c": ("pending", 1, 503),
                       "d": ("suppressed", 0, None), "e": ("silenced", 0, None)}
        told = box.told("t", "a")
        assert told is not None and told.level == "CRITICAL"
        assert box.told("t", "b") is None and box.told("t", "d") is None
        # A delivery batch reads what was told of its ids in one call: only open incidents.
        many = box.told_many("t", ["a", "b", "d", "unknown"])
        assert list(many) == ["a"] and many["a"] == told and box.told_many("other", ["a"]) == {}
        # Each finished id's next row is its head now; "c" retries its first row later.
        assert sorted((h.key, h.level) for h in drain(box, clock)) == [("a", "OK"), ("b", "OK"), ("d", "OK"),
                                                                       ("e", "OK")]
        clock.now += 31
        retry = take(box, clock)
        assert retry is not None and (retry.key, retry.seq) == ("c", heads["c"].seq)

    def test_finish_many_keeps_the_ledger(self, box: Store, clock: Clock) -> None:
        """Deliveries recorded in batches open, extend and close incidents like single ones."""
        for n, level in enumerate(("WARNING", "CRITICAL", "OK"), start=1):
            put(box, "cpu:a", level, n=n)
            put(box, "cpu:b", "CRITICAL", n=n)
            heads = drain(box, clock)
            assert sorted(h.key for h in heads) == ["cpu:a", "cpu:b"]
            self.finish_all(box, [Outcome(h, "delivered", attempts=1, status=202) for h in heads])
            if n == 1:
                opened = clock.now
            clock.now += 10
            if level != "OK":
                inc = box.told("t", "cpu:a")
                assert inc is not None and inc.opened_at == opened and inc.level == level
        assert box.told("t", "cpu:a") is None
        inc = box.told("t", "cpu:b")
        assert inc is not None and inc.fired_levels == ("CRITICAL",) and inc.opened_at == opened
        assert [i.key for i in box.incidents()] == ["cpu:b"]

    def test_finish_many_refuses_bad_outcomes_before_recording_any(self, box: Store, clock: Clock) -> None:
        put(box, "a")
        put(box, "b")
        first, second = drain(box, clock)
        with pytest.raises(ValueError, match="a retry needs next_at"):
            box.finish_many([Outcome(first, "delivered", attempts=1), Outcome(second, "pending")], lambda o, e: None)
        with pytest.raises(ValueError, match="bad final state"):
            box.finish_many([Outcome(first, "gone")], lambda o, e: None)
        rows = box.load_many([first.seq, second.seq])
        # Nothing recorded (SQLite may not have committed the claims' inflight marks yet).
        assert {rows[first.seq].state, rows[second.seq].state} <= {"inflight", "pending"}
        assert box.told("t", "a") is None

    def test_finish_many_on_a_closed_store_reports_errors(self, make_store: Factory, clock: Clock) -> None:
        box = make_store()
        put(box, "a")
        head = take(box, clock)
        assert head is not None
        box.close()
        reported = self.finish_all(box, [Outcome(head, "delivered", attempts=1)])
        assert len(reported) == 1 and isinstance(reported[0][1], StoreError)


class TestExpiry:
    def test_expiry_fires_synthetic_resolve(self, box: Store, clock: Clock) -> None:
        """A quiet id gets a synthetic OK after ``expire_after``; a newer event resets the timer."""
        put(box, "a", expire_after=60)
        head = take(box, clock)
        assert head is not None
        box.finish(head, "delivered", attempts=1)

        def make(target: str, key: str, old: bytes, now: float) -> Optional[bytes]:
            return b'{"resolved":"' + key.encode() + b'"}'

        clock.now += 30
        assert box.fire_expiries(make, wait=True) == []
        clock.now += 31
        fired = box.fire_expiries(make, wait=True)
        assert [(t, k) for _s, t, k in fired] == [("t", "a")]
        row = box.load(fired[0][0])
        assert row is not None and row.synthetic and row.level == "OK"
        assert box.fire_expiries(make, wait=True) == []


class TestLedger:
    def test_trigger_escalate_resolve(self, box: Store, clock: Clock) -> None:
        """Non-OK deliveries open and extend the incident; OK closes it."""
        first = deliver(box, clock, "cpu:a", "WARNING", n=1)
        opened = clock.now
        clock.now += 10
        second = deliver(box, clock, "cpu:a", "CRITICAL", n=2)
        clock.now += 10
        deliver(box, clock, "cpu:a", "WARNING", n=3)
        inc = box.told("t", "cpu:a")
        assert inc is not None
        assert inc.level == "WARNING" and inc.fired_levels == ("WARNING", "CRITICAL")
        assert inc.opened_at == opened and inc.told_at == clock.now and inc.seq > second.seq > first.seq
        assert b'"level":"WARNING"' in inc.body
        deliver(box, clock, "cpu:a", "OK", n=4)
        assert box.told("t", "cpu:a") is None and box.incidents() == []
        deliver(box, clock, "cpu:a", "INFO", n=5)
        reopened = box.told("t", "cpu:a")
        assert reopened is not None and reopened.fired_levels == ("INFO",) and reopened.opened_at == clock.now

    def test_only_deliveries_count(self, box: Store, clock: Clock) -> None:
        """Dead, suppressed and retried rows never reach the ledger."""
        for state in ("dead", "suppressed"):
            put(box, f"k-{state}")
            head = take(box, clock)
            assert head is not None
            box.finish(head, state)
        put(box, "k-retry")
        head = take(box, clock)
        assert head is not None
        box.finish(head, "pending", attempts=1, next_at=clock.now + 60)
        assert box.incidents() == []

    def test_incidents_by_target(self, box: Store, clock: Clock) -> None:
        """``incidents(target)`` filters; ``incidents()`` lists every target's."""
        deliver(box, clock, "a", "CRITICAL", target="t1")
        deliver(box, clock, "b", "CRITICAL", target="t2")
        assert [i.target for i in box.incidents()] == ["t1", "t2"]
        assert [i.key for i in box.incidents("t2")] == ["b"]

    def test_survives_restart(self, make_store: Factory, clock: Clock) -> None:
        """The ledger is read from the store, not from memory."""
        box = make_store()
        deliver(box, clock, "a", "CRITICAL")
        box.close()
        again = make_store()
        assert [i.key for i in again.incidents()] == ["a"]

    def test_idle_and_hold(self, box: Store, clock: Clock) -> None:
        """Busy or pending keys are not idle; held keys are not claimable until released."""
        deliver(box, clock, "a", "CRITICAL")
        assert box.idle("t", "a") and box.idle("t", "never-seen")
        put(box, "b")
        assert not box.idle("t", "b")
        with box.hold("t", ["a", "b"]) as held:
            assert held == ["a"]
            assert not box.idle("t", "a")
            put(box, "a", "OK", n=9)
            head = take(box, clock)
            assert head is not None and head.key == "b"
            assert take(box, clock) is None
        head = take(box, clock)
        assert head is not None and head.key == "a" and head.level == "OK"


def states(box: Store, seqs: List[int]) -> List[str]:
    out = []
    for seq in seqs:
        row = box.load(seq)
        assert row is not None
        out.append(row.state)
    return out


class TestCoalesce:
    """Outage coalescing (:mod:`bridge.coalesce`): the same rule and plan on every backend."""

    def test_flips_become_worst_then_latest(self, box: Store, clock: Clock) -> None:
        """Twenty flips of one id become two deliveries (worst, then latest); the rest are kept as superseded."""
        seqs = [put(box, "a", ("CRITICAL", "WARNING", "OK")[i % 3], n=i) for i in range(20)]
        put(box, "b", "CRITICAL")
        assert box.coalescible("t", clock.now) == [], "a fresh burst to a healthy platform is not a backlog"
        assert box.coalescible("t", clock.now + BACKLOG_AGE) == ["a"]
        assert box.coalesce("t", "worst-then-latest", limited=True) == 18
        assert box.coalescible("t", clock.now + BACKLOG_AGE) == []
        assert states(box, seqs) == ["superseded"] * 18 + ["pending"] * 2
        row = box.load(seqs[0])
        assert row is not None and row.body == body("a", "CRITICAL", 0), "superseded rows keep their data"
        assert box.stats().pending == {"t": 3}
        sent = []
        while (head := take(box, clock)) is not None:
            sent.append((head.key, head.level, head.seq))
            box.finish(head, "delivered", attempts=1)
        assert [s for s in sent if s[0] == "a"] == [("a", "CRITICAL", seqs[18]), ("a", "WARNING", seqs[19])]

    def test_latest_and_off(self, box: Store, clock: Clock) -> None:
        """``latest`` keeps only the newest event; ``off`` supersedes nothing."""
        for i, level in enumerate(("CRITICAL", "OK", "WARNING")):
            put(box, "a", level, n=i)
        assert box.coalesce("t", "off", limited=True) == 0
        assert box.coalesce("t", "latest", limited=True) == 2
        head = take(box, clock)
        assert head is not None and head.level == "WARNING" and take(box, clock) is None

    def test_told_level_is_not_repeated(self, box: Store, clock: Clock) -> None:
        """If the platform was last told CRITICAL, a backlog ending in OK sends only the OK."""
        deliver(box, clock, "a", "CRITICAL")
        for i, level in enumerate(("OK", "CRITICAL", "OK")):
            put(box, "a", level, n=i + 1)
        assert box.coalesce("t", "worst-then-latest", limited=True) == 2
        head = take(box, clock)
        assert head is not None and head.level == "OK" and take(box, clock) is None

    def test_busy_key_waits_and_inherits_backoff(self, box: Store, clock: Clock) -> None:
        """A key with a row in flight is never coalesced; after a failure the kept row keeps the retry schedule."""
        put(box, "a", "CRITICAL")
        head = take(box, clock)
        assert head is not None
        for i, level in enumerate(("OK", "WARNING", "OK")):
            put(box, "a", level, n=i + 1)
        assert box.coalescible("t", limited=True) == [] and box.coalesce("t", "latest", limited=True) == 0
        box.finish(head, "pending", attempts=1, next_at=clock.now + 30)
        assert box.coalescible("t") == ["a"], "a head that failed once makes a backlog"
        assert box.coalesce("t", "latest") == 3
        nxt, due = box.peek("t", clock.now)
        assert nxt is None and due == clock.now + 30, "the retry schedule is inherited, not reset"
        nxt, _ = box.peek("t", clock.now + 30)
        assert nxt is not None and nxt.level == "OK"
        row = box.load(nxt.seq)
        assert row is not None and row.attempts == 1

    def test_backlog_found_after_restart(self, make_store: Factory, clock: Clock) -> None:
        """After a restart the keys with a backlog are found again (the outage-then-restart case)."""
        box = make_store()
        for i, level in enumerate(("CRITICAL", "OK", "CRITICAL")):
            put(box, "a", level, n=i)
        put(box, "b", "OK")
        box.close()
        box = make_store()
        assert box.coalescible("t", limited=True) == ["a"]
        assert box.coalesce("t", "latest", limited=True) == 2


class TestResolvesFirst:
    def test_ready_resolve_goes_first(self, box: Store, clock: Clock) -> None:
        """Under a rate limit a ready resolve is offered before earlier triggers of other ids."""
        for key in ("x1", "x2", "x3"):
            put(box, key, "CRITICAL")
        put(box, "y", "OK")
        head, _ = box.peek("t", clock.now, resolves_first=True)
        assert head is not None and head.key == "y"
        assert box.claim(head)
        head, _ = box.peek("t", clock.now, resolves_first=True)
        assert head is not None and head.key == "x1"

    def test_resolve_behind_its_trigger_waits(self, box: Store, clock: Clock) -> None:
        """An OK queued behind its own id's trigger is not a head: per-id order holds."""
        put(box, "x", "CRITICAL")
        put(box, "x", "OK")
        put(box, "y", "CRITICAL")
        head, _ = box.peek("t", clock.now, resolves_first=True)
        assert head is not None and (head.key, head.level) == ("x", "CRITICAL")


class TestOrderSafeReplay:
    def _dead_then_ok(self, box: Store, clock: Clock) -> int:
        put(box, "a", "CRITICAL")
        head = take(box, clock)
        assert head is not None
        box.finish(head, "dead", attempts=5, error="400", status=400)
        deliver(box, clock, "a", "OK", n=1)
        return head.seq

    def test_superseded_dead_letter_stays_dead(self, box: Store, clock: Clock) -> None:
        """A dead CRITICAL after its id's delivered OK is not re-sent: it would re-open the incident."""
        dead = self._dead_then_ok(box, clock)
        result = box.replay("t", "a")
        assert result.count == 0 and [s.row.seq for s in result.superseded] == [dead]
        assert take(box, clock) is None and box.stats().dead == {"t": 1}

    def test_force_queues_a_copy_after_the_newer_events(self, box: Store, clock: Clock) -> None:
        """``--force`` sends it anyway, as a new row after the OK, and says it re-opens the incident."""
        dead = self._dead_then_ok(box, clock)
        result = box.replay("t", "a", force=True)
        assert result.count == 1 and len(result.forced) == 1
        forced = result.forced[0]
        assert forced.row.seq == dead and forced.new_seq > dead and "re-opens" in forced.effect
        assert states(box, [dead]) == ["superseded"] and box.stats().dead == {}
        head = take(box, clock)
        assert head is not None and (head.seq, head.level) == (forced.new_seq, "CRITICAL")
        row = box.load(head.seq)
        assert row is not None and row.body == body("a", "CRITICAL")
