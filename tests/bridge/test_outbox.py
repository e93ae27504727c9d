"""The SQLite outbox: durable enqueue, head-only claims, recovery, dead letters, replay."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from bridge.errors import StoreError
from bridge.outbox import Outbox
from bridge.store import Head, dead_letters, open_store, queue_counts
from bridge.store_ops import replay


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def box(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    outbox = Outbox(str(tmp_path / "o.db"), clock=clock).open()
    yield outbox
    outbox.close()


def put(box: Outbox, key: str, level: str = "CRITICAL", target: str = "t", **kw: object) -> int:
    body = f'{{"id":"{key}","level":"{level}","time":"2026-01-01T00:00:00Z"}}'.encode()
    return box.enqueue(target, key, level, body, **kw).result(5)  # type: ignore[arg-type]


def take(box: Outbox, target: str = "t", now: Optional[float] = None) -> Optional[Head]:
    head, _due = box.peek(target, now if now is not None else box._clock())
    if head is not None:
        assert box.claim(head)
    return head


def drain_ready(box: Outbox, target: str = "t") -> List[Head]:
    heads: List[Head] = []
    while True:
        head = take(box, target)
        if head is None:
            return heads
        heads.append(head)


class TestEnqueue:
    def test_durable_and_private(self, box: Outbox, tmp_path: Path) -> None:
        """A committed row is readable and the file is created with mode 0600."""
        seq = put(box, "cpu:a")
        row = box.load(seq)
        assert row is not None and row.state == "pending" and row.key == "cpu:a" and row.attempts == 0
        mode = stat.S_IMODE(os.stat(tmp_path / "o.db").st_mode)
        assert mode == 0o600

    def test_group_commit_many_threads(self, box: Outbox) -> None:
        """Concurrent enqueues all commit, with distinct increasing seqs per thread."""
        results: List[List[int]] = [[] for _ in range(8)]

        def worker(i: int) -> None:
            futures = [box.enqueue("t", f"k{i}", "CRITICAL", b"{}") for _ in range(100)]
            results[i] = [f.result(10) for f in futures]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seqs = [s for r in results for s in r]
        assert len(set(seqs)) == 800
        assert all(r == sorted(r) for r in results)
        assert box.stats().pending == {"t": 800}


class TestClaimOrder:
    def test_only_head_of_key(self, box: Outbox) -> None:
        """A key's second event is not claimable until its first is finished."""
        first = put(box, "a", "CRITICAL")
        second = put(box, "a", "OK")
        other = put(box, "b", "CRITICAL")
        heads = drain_ready(box)
        assert sorted(h.seq for h in heads) == [first, other]
        a = next(h for h in heads if h.key == "a")
        box.finish(a, "delivered", attempts=1, status=202)
        nxt = take(box)
        assert nxt is not None and nxt.seq == second and nxt.level == "OK"

    def test_retry_waits_for_due_time(self, box: Outbox, clock: Clock) -> None:
        """A retried head is not ready before next_at, and keeps blocking its key."""
        seq = put(box, "a")
        put(box, "a", "OK")
        head = take(box)
        assert head is not None
        box.finish(head, "pending", attempts=1, next_at=clock.now + 30, error="HTTP 500", status=500)
        ready, due = box.peek("t", clock.now)
        assert ready is None and due == clock.now + 30
        clock.now += 31
        again = take(box)
        assert again is not None and again.seq == seq
        row = box.load(seq)
        assert row is not None and row.attempts == 1 and row.last_status == 500

    def test_due_order_across_keys(self, box: Outbox) -> None:
        """Ready heads come out oldest first."""
        for key in ("c", "a", "b"):
            put(box, key)
        assert [h.key for h in drain_ready(box)] == ["c", "a", "b"]

    def test_targets_are_separate(self, box: Outbox) -> None:
        """Each target has its own heads even for the same id."""
        put(box, "a", target="x")
        put(box, "a", target="y")
        assert take(box, "x") is not None and take(box, "y") is not None


class TestRecovery:
    def test_inflight_back_to_pending(self, tmp_path: Path, clock: Clock) -> None:
        """Rows claimed when the process died are pending again after reopening (at-least-once)."""
        path = str(tmp_path / "o.db")
        box = Outbox(path, clock=clock).open()
        seq = put(box, "a")
        put(box, "a", "OK")
        head = take(box)
        assert head is not None and head.seq == seq
        box.close()  # claim written as inflight, never finished
        conn = open_store(path, create=False)
        assert queue_counts(conn)[("t", "inflight")] == 1
        conn.close()

        box = Outbox(path, clock=clock).open()
        try:
            assert box.recovered_inflight == 1
            again = take(box)
            assert again is not None and again.seq == seq
            assert take(box) is None  # the resolve still waits behind its trigger
        finally:
            box.close()

    def test_retry_schedule_survives_restart(self, tmp_path: Path, clock: Clock) -> None:
        """attempts and next_attempt_at live in the row."""
        path = str(tmp_path / "o.db")
        box = Outbox(path, clock=clock).open()
        put(box, "a")
        head = take(box)
        assert head is not None
        box.finish(head, "pending", attempts=3, next_at=clock.now + 60, error="HTTP 503", status=503)
        box.close()
        box = Outbox(path, clock=clock).open()
        try:
            ready, due = box.peek("t", clock.now)
            assert ready is None and due == clock.now + 60
            assert box.stats().pending == {"t": 1}
        finally:
            box.close()


class TestDeadLetters:
    def test_dead_and_replay(self, box: Outbox) -> None:
        """Dead rows keep status and error; replay makes them pending with fresh attempts."""
        seq = put(box, "a")
        head = take(box)
        assert head is not None
        box.finish(head, "dead", attempts=1, error="HTTP 400: bad field", status=400)
        assert box.stats().dead == {"t": 1}
        assert take(box) is None
        assert box.replay(target="t", key="a").count == 1
        again = take(box)
        assert again is not None and again.seq == seq
        box.finish(again, "delivered", attempts=1, status=202)
        row = box.load(seq)
        assert row is not None and row.state == "delivered" and row.attempts == 1

    def test_offline_replay_is_noticed(self, box: Outbox, tmp_path: Path) -> None:
        """``replay`` from another process is picked up via data_version."""
        put(box, "a")
        head = take(box)
        assert head is not None
        box.finish(head, "dead", attempts=1, error="HTTP 400", status=400)
        conn = open_store(str(tmp_path / "o.db"), create=False)
        try:
            assert [r.key for r in dead_letters(conn)] == ["a"]
            assert replay(conn, target="t").count == 1
        finally:
            conn.close()
        box.check_external(wait=True)
        assert box.stats().dead == {} and box.stats().pending == {"t": 1}
        assert take(box, now=time.time() + 1) is not None  # replay stamps wall-clock time

    def test_replay_filters(self, box: Outbox) -> None:
        """Replay can be limited to one id."""
        for key in ("a", "b"):
            put(box, key)
        for head in drain_ready(box):
            box.finish(head, "dead", attempts=1, error="x", status=400)
        assert box.replay(key="b").count == 1
        assert [h.key for h in drain_ready(box)] == ["b"]


class TestHousekeeping:
    def test_prune_keeps_recent_and_dead(self, box: Outbox) -> None:
        """Delivered rows are bounded; dead letters are never pruned."""
        for i in range(10):
            put(box, f"k{i}")
        for i, head in enumerate(drain_ready(box)):
            box.finish(head, "dead" if i == 0 else "delivered", attempts=1, status=202)
        box.prune(keep=3, wait=True)
        conn = sqlite3.connect(box.path)
        try:
            counts = dict(conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
        finally:
            conn.close()
        assert counts == {"delivered": 3, "dead": 1}

    def test_forwarded_memory(self, box: Outbox, clock: Clock) -> None:
        """The last delivered level per key is remembered (and forgotten when stale)."""
        put(box, "a", "WARNING")
        head = take(box)
        assert head is not None
        box.finish(head, "delivered", attempts=1, status=202)
        last = box.forwarded("t", "a")
        assert last is not None and last.level == "WARNING"
        box.prune(keep=100, forget_before=clock.now + 1, wait=True)
        assert box.forwarded("t", "a") is None

    def test_expiry_fires_synthetic_resolve(self, box: Outbox, clock: Clock) -> None:
        """A quiet id gets a synthetic OK once its timer is due, exactly once."""
        put(box, "a", expire_after=60)
        put(box, "b", expire_after=60)
        put(box, "b", "OK")  # b recovered: its timer is gone

        def make(target: str, key: str, body: bytes, now: float) -> bytes:
            return f'{{"id":"{key}","level":"OK","time":"2026-01-01T00:00:00Z"}}'.encode()

        assert box.fire_expiries(make, wait=True) == []
        clock.now += 61
        fired = box.fire_expiries(make, wait=True)
        assert [(t, k) for _seq, t, k in fired] == [("t", "a")]
        assert box.fire_expiries(make, wait=True) == []
        row = box.load(fired[0][0])
        assert row is not None and row.level == "OK" and row.synthetic

    def test_probe(self, box: Outbox) -> None:
        """A healthy store answers the write probe."""
        assert box.probe()
        assert box.stats().writable


class TestOpening:
    def test_foreign_database_refused(self, tmp_path: Path) -> None:
        """Another application's SQLite file is never touched."""
        path = tmp_path / "other.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match="another application"):
            Outbox(str(path)).open()

    def test_garbage_file_refused(self, tmp_path: Path) -> None:
        """A file that is not SQLite at all gives a clear error."""
        path = tmp_path / "junk.db"
        path.write_bytes(b"this is not a database, just some bytes" * 200)
        with pytest.raises(StoreError, match="not a kapacitor-oncall store"):
            Outbox(str(path)).open()

    def test_corrupt_store_refused(self, tmp_path: Path) -> None:
        """Damaged pages of a real store are caught at startup."""
        path = tmp_path / "o.db"
        box = Outbox(str(path)).open()
        for i in range(300):
            box.enqueue("t", f"k{i}", "CRITICAL", b"x" * 500)
        put(box, "last")
        box.close()
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        data = bytearray(path.read_bytes())
        for offset in range(4096 * 3, len(data) - 4096, 4096):
            data[offset + 100 : offset + 400] = b"\xff" * 300
        path.write_bytes(bytes(data))
        with pytest.raises(StoreError, match="corrupt|malformed|not a kapacitor"):
            Outbox(str(path)).open()

    def test_missing_directory(self, tmp_path: Path) -> None:
        """A store path in a missing directory says so."""
        with pytest.raises(StoreError, match="does not exist"):
            Outbox(str(tmp_path / "nope" / "o.db")).open()

    def test_cli_open_requires_existing(self, tmp_path: Path) -> None:
        """Offline commands never create an empty store by accident."""
        with pytest.raises(StoreError, match="no such file"):
            open_store(str(tmp_path / "none.db"), create=False)

    def test_closed_outbox_refuses(self, tmp_path: Path) -> None:
        """After close, enqueue fails loudly instead of dropping."""
        box = Outbox(str(tmp_path / "o.db")).open()
        box.close()
        with pytest.raises(StoreError):
            box.enqueue("t", "a", "CRITICAL", b"{}").result(5)
