"""PostgreSQL backend specifics: schema versions, replicas sharing one database,
leases, singletons, shared rate limits, and the database going away (a real server)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator, List, Optional, Tuple

import psycopg
import pytest

from bridge.errors import StoreError
from bridge.pg import SCHEMA_VERSION, PgOutbox, SharedRateLimiters, arrays
from bridge.pg.claims import IDLE_RECHECK
from bridge.pg.schema import MIGRATIONS
from bridge.ratelimit import RateLimiter
from bridge.store import Outcome
from bridge.targets.base import RateLimit
from tests.pgserver import PgServer

from .conftest import webhook_config
from .harness import Receiver, kapacitor_event, wait_until


@pytest.fixture
def dsn(pg_server: PgServer) -> str:
    return pg_server.create_database("pg")


@pytest.fixture
def replicas(dsn: str) -> Iterator[List[PgOutbox]]:
    """Two replicas on one database (a lease long enough that a loaded machine never lets it run out)."""
    boxes = [PgOutbox(dsn, replica_id=f"r{i}", lease=10.0).open() for i in (1, 2)]
    yield boxes
    for box in boxes:
        box.close()


def put(box: PgOutbox, key: str, level: str = "CRITICAL", n: int = 0) -> int:
    body = f'{{"id":"{key}","level":"{level}","time":"2026-01-01T00:00:{n:02d}Z"}}'.encode()
    return box.enqueue("t", key, level, body).result(10)


class TestSchema:
    def test_fresh_database_is_current(self, dsn: str) -> None:
        """Opening a new database applies every migration once."""
        PgOutbox(dsn, replica_id="r").open().close()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT max(version), count(*) FROM oncall_schema").fetchone() == (SCHEMA_VERSION, len(MIGRATIONS))

    def test_replicas_starting_together_migrate_once(self, dsn: str) -> None:
        """The advisory lock lets one replica migrate while the others wait."""
        errors: List[BaseException] = []
        boxes: List[PgOutbox] = []

        def start(i: int) -> None:
            try:
                boxes.append(PgOutbox(dsn, replica_id=f"r{i}").open())
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for box in boxes:
            box.close()
        assert errors == [] and len(boxes) == 4
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM oncall_schema").fetchone() == (len(MIGRATIONS),)

    def test_newer_schema_refused(self, dsn: str) -> None:
        """A database migrated by a newer bridge refuses to start, naming both versions."""
        PgOutbox(dsn, replica_id="r").open().close()
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO oncall_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
        with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
            PgOutbox(dsn, replica_id="r").open()

    def test_unreachable_database_is_a_clear_error(self, pg_server: PgServer) -> None:
        """A wrong database name fails open with StoreError, never quoting a password."""
        dsn = pg_server.dsn("no_such_db") + " password=hunter2-secret"
        with pytest.raises(StoreError) as info:
            PgOutbox(dsn, replica_id="r").open()
        assert "no_such_db" in str(info.value) and "hunter2" not in str(info.value)


class TestReplicas:
    def test_same_event_on_two_replicas_is_stored_once(self, replicas: List[PgOutbox]) -> None:
        """Both posts get the same seq; the duplicate is counted."""
        a, b = replicas
        assert put(a, "k") == put(b, "k")
        assert b.duplicates == 1
        other = put(b, "k", n=1)  # a different event time is a different event
        assert other != put(a, "k")

    def test_one_inflight_row_per_key_across_replicas(self, replicas: List[PgOutbox]) -> None:
        """While one replica delivers a key's head, the other cannot claim that key."""
        a, b = replicas
        put(a, "k", n=1)
        put(b, "k", "OK", n=2)
        head, _ = a.peek("t", time.time())
        assert head is not None and a.claim(head)
        assert b.peek("t", time.time())[0] is None
        a.finish(head, "delivered", attempts=1)
        # b learns of the head a's finish made when its "nothing ready" answer expires.
        nxt = wait_until(lambda: b.peek("t", time.time())[0], timeout=IDLE_RECHECK + 1.0)
        assert nxt.level == "OK" and nxt.seq > head.seq

    def test_coalescing_leaves_a_key_in_flight_on_another_replica_alone(self, replicas: List[PgOutbox]) -> None:
        """Replica b never supersedes rows of a key whose head replica a is delivering; once a's
        attempt fails, b coalesces the backlog and the latest state goes next, once."""
        a, b = replicas
        put(a, "k", n=1)
        head, _ = a.peek("t", time.time())
        assert head is not None and a.claim(head)
        for i, level in enumerate(("OK", "WARNING", "OK"), start=2):
            put(b, "k", level, n=i)
        assert b.coalescible("t", limited=True) == [] and b.coalesce("t", "latest", limited=True) == 0
        a.finish(head, "pending", attempts=1, next_at=time.time() + 0.01)
        assert b.coalescible("t", time.time()) == ["k"], "a head that failed once makes a backlog"
        assert b.coalesce("t", "latest") == 3 and a.coalesce("t", "latest", limited=True) == 0
        nxt, _ = a.peek("t", time.time() + 1)
        assert nxt is not None and nxt.level == "OK" and nxt.seq > head.seq

    def test_resolve_claimed_first_across_replicas(self, replicas: List[PgOutbox]) -> None:
        """A replica whose own batch holds triggers still claims another id's ready resolve first."""
        a, b = replicas
        for i in range(3):
            put(a, f"x{i}", n=i)
        head, _ = a.peek("t", time.time())
        assert head is not None and head.key == "x0"
        put(b, "y", "OK")
        first, _ = a.peek("t", time.time(), resolves_first=True)
        assert first is not None and (first.key, first.level) == ("y", "OK")

    def test_concurrent_inserts_keep_key_order(self, replicas: List[PgOutbox]) -> None:
        """Inserts of one key from two replicas at once: claims follow commit order, one at a time."""
        a, b = replicas
        committed: List[int] = []
        lock = threading.Lock()

        def post(box: PgOutbox, base: int) -> None:
            for i in range(30):
                seq = put(box, "k", n=(base + i) % 60)
                with lock:
                    committed.append(seq)

        threads = [threading.Thread(target=post, args=(box, i * 30)) for i, box in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        delivered: List[int] = []
        while len(delivered) < len(set(committed)):
            for box in (a, b):
                head, _ = box.peek("t", time.time())
                if head is None:
                    continue
                assert box.claim(head)
                other = b if box is a else a
                assert other.peek("t", time.time())[0] is None
                delivered.append(head.seq)
                box.finish(head, "delivered", attempts=1)
        assert delivered == sorted(set(committed))

    def test_an_idle_target_is_not_asked_every_round(self, replicas: List[PgOutbox], monkeypatch: pytest.MonkeyPatch) -> None:
        """The dispatcher peeks at every target each round (a round per commit under a storm):
        an empty target answers from memory until something could have changed, and this
        replica's own accept, or one on another replica, is claimable at once."""
        a, b = replicas
        queries: List[str] = []
        claim = a._claim

        def counted(statement: str, *args: Any, **kwargs: Any) -> Any:
            queries.append(statement)
            return claim(statement, *args, **kwargs)

        monkeypatch.setattr(a, "_claim", counted)
        for _ in range(50):
            assert a.peek("t", time.time())[0] is None
        assert len(queries) == 1
        seq = put(a, "k")
        head = a.peek("t", time.time())[0]
        assert head is not None and head.seq == seq and len(queries) == 2
        assert a.peek("u", time.time())[0] is None
        other = b.enqueue("u", "j", "CRITICAL", b'{"id":"j"}').result(10)
        wait_until(lambda: (h := a.peek("u", time.time())[0]) is not None and h.seq == other, timeout=5)

    def test_lease_expiry_moves_rows_to_another_replica(self, dsn: str) -> None:
        """A replica that stops renewing loses its in-flight row after the lease; its late finish is ignored."""
        a, b = (PgOutbox(dsn, replica_id=f"r{i}", lease=1.0).open() for i in (1, 2))
        try:
            self._lease_expiry(a, b)
        finally:
            a.close()
            b.close()

    def test_late_batch_finish_is_ignored(self, dsn: str) -> None:
        """The batched finish (the delivery engine's) leaves a row alone once another replica took
        it after the lease, and still records the rest of its batch."""
        a, b = (PgOutbox(dsn, replica_id=f"r{i}", lease=1.0).open() for i in (1, 2))
        try:
            lost, kept = put(a, "lost"), put(a, "kept")
            heads = {}
            for _ in range(2):
                head, _due = a.peek("t", time.time())
                assert head is not None and a.claim(head)
                heads[head.key] = head
            a._stop.set()  # a's keeper stops renewing
            time.sleep(0.2)
            with psycopg.connect(dsn, autocommit=True) as conn:  # the lease of one row ran out
                conn.execute("UPDATE oncall_queue SET lease_until = 0 WHERE key = 'lost'")
            b.keep()
            again, _ = b.peek("t", time.time())
            assert again is not None and again.seq == lost and b.claim(again)
            results: List[Tuple[str, Optional[BaseException]]] = []
            settled = threading.Event()

            def done(o: Outcome, error: Optional[BaseException]) -> None:
                results.append((o.head.key, error))
                if len(results) == 2:
                    settled.set()

            a.finish_many([Outcome(heads["lost"], "delivered", attempts=1),
                           Outcome(heads["kept"], "delivered", attempts=1)], done)
            assert settled.wait(10) and all(e is None for _k, e in results)
            assert b.load(lost).state == "inflight"  # type: ignore[union-attr]
            assert b.load(kept).state == "delivered"  # type: ignore[union-attr]
            b.finish(again, "delivered", attempts=1)
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT delivered_by FROM oncall_outbox WHERE seq = %s", (lost,)).fetchone() == ("r2",)
        finally:
            a.close()
            b.close()

    def _lease_expiry(self, a: PgOutbox, b: PgOutbox) -> None:
        seq = put(a, "k")
        head, _ = a.peek("t", time.time())
        assert head is not None and a.claim(head)
        a._stop.set()  # a hangs: no more lease renewals
        time.sleep(1.3)
        b.keep()
        assert b.resumed == 1
        again, _ = b.peek("t", time.time())
        assert again is not None and again.seq == seq and b.claim(again)
        a.finish(head, "delivered", attempts=1)  # stale: must not touch b's claim
        b.finish(again, "delivered", attempts=1)
        row = b.load(seq)
        assert row is not None and row.state == "delivered"
        with psycopg.connect(b._dsn) as conn:
            assert conn.execute("SELECT delivered_by, resumed FROM oncall_outbox WHERE seq = %s",
                                (seq,)).fetchone() == ("r2", 1)

    def test_singletons_held_by_one_replica_and_move_on_close(self, replicas: List[PgOutbox]) -> None:
        """Each singleton job has exactly one holder; it moves when the holder goes."""
        a, b = replicas
        a.keep()
        b.keep()
        for job in ("expiry", "prune", "heartbeat"):
            assert a.holds(job) != b.holds(job)
        holder, other = (a, b) if a.holds("expiry") else (b, a)
        made: List[str] = []
        other.enqueue("t", "x", "CRITICAL", b"{}", expire_after=0.0).result(10)
        assert other.fire_expiries(lambda t, k, body, now: made.append(k) or b"{}", wait=True) == []
        assert len(holder.fire_expiries(lambda t, k, body, now: made.append(k) or b"{}", wait=True)) == 1
        assert made == ["x"]
        holder.close()
        other.keep()
        assert other.holds("expiry")

    def test_rate_limit_holds_in_aggregate(self, replicas: List[PgOutbox]) -> None:
        """Two replicas with a 5 / 2 s limit take at most 5 tokens in any 2 s window together."""
        limit = RateLimit(5, 2.0)
        limiters = [SharedRateLimiters(box, {"t": limit}) for box in replicas]
        taken: List[float] = []
        lock = threading.Lock()
        end = time.monotonic() + 5.0

        def run(lim: SharedRateLimiters) -> None:
            while time.monotonic() < end:
                if lim.wait_time("t") == 0 and lim.try_acquire("t"):
                    with lock:
                        taken.append(time.monotonic())
                else:
                    time.sleep(0.01)

        threads = [threading.Thread(target=run, args=(lim,)) for lim in limiters for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        window = RateLimiter(limit).window
        assert len(taken) >= 10
        taken.sort()
        for i, at in enumerate(taken):
            assert sum(1 for x in taken[i:] if x - at < window - 0.05) <= 5


class TestBatchedAccept:
    """``oncall_enqueue_many``: a writer's whole batch in one statement, same rules as one by one."""

    @staticmethod
    def _batch(conn: "psycopg.Connection[Any]", rows: List[Any]) -> List[Any]:
        from bridge.pg import sql
        from bridge.pg.rows import dedup_key

        params = [(t, k, lvl, body, now, exp, False, dedup_key(t, k, lvl, body)) for t, k, lvl, body, now, exp in rows]
        cols = [list(col) for col in zip(*params)]
        return conn.execute(sql.ENQUEUE_MANY, [*cols, "test"]).fetchall()

    def test_batch_dedups_orders_heads_and_timers(self, dsn: str) -> None:
        """In-batch and stored duplicates get the stored seq; new rows are numbered in batch
        order; only an idle key gets a head; a key's last new row decides its timer."""
        PgOutbox(dsn, replica_id="m").open().close()  # migrate
        with psycopg.connect(dsn, autocommit=True) as conn:
            (stored,) = self._batch(conn, [("t", "old", "CRITICAL", b"o", 1.0, None)])
            assert stored[2:] == (False, True)
            got = self._batch(conn, [
                ("t", "k", "CRITICAL", b"a", 2.0, 100.0),
                ("t", "old", "CRITICAL", b"o", 2.0, None),   # stored before
                ("t", "k", "CRITICAL", b"a", 2.0, 100.0),    # again in this batch
                ("t", "j", "WARNING", b"j", 2.0, 50.0),
                ("t", "k", "OK", b"b", 3.0, None),
                ("t", "old", "OK", b"p", 3.0, None),
            ])
            assert [r[0] for r in got] == [1, 2, 3, 4, 5, 6]
            seq = {r[0]: r[1] for r in got}
            assert [r[2] for r in got] == [False, True, True, False, False, False]
            assert seq[2] == stored[1] and seq[3] == seq[1]
            assert seq[1] < seq[4] < seq[5] < seq[6]
            assert [r[3] for r in got] == [True, False, False, True, False, False], "old already has a head"
            assert conn.execute("SELECT duplicates FROM oncall_outbox WHERE seq = %s", (stored[1],)).fetchone() == (1,)
            assert conn.execute("SELECT duplicates FROM oncall_outbox WHERE seq = %s", (seq[1],)).fetchone() == (1,)
            heads = dict(conn.execute("SELECT key, head_seq FROM oncall_queue WHERE target = 't'").fetchall())
            assert heads == {"old": stored[1], "k": seq[1], "j": seq[4]}
            timers = conn.execute("SELECT key, due_at FROM oncall_expiry ORDER BY key").fetchall()
            assert timers == [("j", 50.0)], "k's last event (an OK) cleared the timer its first one set"
            assert conn.execute("SELECT count(*) FROM oncall_outbox").fetchone() == (5,)

    def test_any_key_and_body_round_trip(self, dsn: str) -> None:
        """The writer passes its batch as array literals it builds itself: ids with quotes,
        backslashes, commas, braces, spaces, non-ASCII or the word NULL, and any body bytes,
        come back exactly as posted."""
        keys = ['a "b" \\c,{d} e', "NULL", "", "é✓ \t", "x\\"]
        box = PgOutbox(dsn, replica_id="r1").open()
        try:
            futures = [box.enqueue("t", k, "CRITICAL", bytes(range(256)) + k.encode(), expire_after=1.5 if i % 2 else None)
                       for i, k in enumerate(keys)]
            for k, f in zip(keys, futures):
                row = box.load(f.result(10))
                assert row is not None and (row.key, row.body) == (k, bytes(range(256)) + k.encode())
        finally:
            box.close()

    @pytest.mark.parametrize("values", [
        ["cpu:host=web-1", "NULL", "", "é✓ \t,{x}", " lead and trail "],  # nothing to escape
        ["plain", 'a","b'],  # a quote that looks like the separator
        ["plain", "back\\slash", None],
        ["only"],
        [""],
        [None],
        [],
    ])
    def test_text_array_literals_round_trip(self, dsn: str, values: List[Optional[str]]) -> None:
        """``arrays.texts`` (the writer's and the finisher's text columns) reads back in
        PostgreSQL as exactly the values given, on its unescaped path and its escaping one."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            found = conn.execute("SELECT %s::text[]", (arrays.texts(values),)).fetchone()
        assert found is not None and found[0] == values

    def test_other_replicas_woken_only_for_new_heads(self, dsn: str) -> None:
        """A batch that makes a head NOTIFYs once, naming the writer; a row queued behind a head
        (claimable only after that head finishes) wakes nobody."""
        PgOutbox(dsn, replica_id="m").open().close()  # migrate
        with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn, autocommit=True) as conn:
            listener.execute("LISTEN oncall_enqueue")
            self._batch(conn, [("t", "k", "CRITICAL", b"1", 1.0, None), ("t", "j", "CRITICAL", b"2", 1.0, None)])
            woke = [n.payload for n in listener.notifies(timeout=2.0)]
            assert woke == ["test"]
            self._batch(conn, [("t", "k", "OK", b"3", 2.0, None)])
            assert [n.payload for n in listener.notifies(timeout=1.0)] == []

    @pytest.mark.parametrize("writers", [1, 3])
    def test_an_id_commits_in_post_order_across_writer_lanes(self, dsn: str, writers: int) -> None:
        """Writer lanes (``[store] writers``) commit side by side, but one id's posts, queued
        back to back without waiting, get seqs in the order they were posted (an id has one lane)."""
        keys = [f"id{i}" for i in range(24)]
        box = PgOutbox(dsn, replica_id="r1", writers=writers).open()
        try:
            posted = [(k, n, box.enqueue("t", k, "CRITICAL", f"{k}/{n}".encode())) for n in range(30) for k in keys]
            seqs = {(k, n): f.result(10) for k, n, f in posted}
        finally:
            box.close()
        for k in keys:
            mine = [seqs[(k, n)] for n in range(30)]
            assert mine == sorted(mine), f"{k}: posts committed out of order"
        assert len(set(seqs.values())) == len(seqs)

    @pytest.mark.parametrize("writers", [1, 2])
    def test_writers_connect_at_start_not_on_the_first_alert(self, dsn: str, writers: int) -> None:
        """Each writer lane opens its session when the store opens, so the first alert after a
        start does not also wait for a new connection; the sessions carry the replica's name."""
        box = PgOutbox(dsn, replica_id="r1", writers=writers).open()
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                def sessions() -> int:
                    (n,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                        " AND application_name = 'kapacitor-oncall writer r1'").fetchone() or (0,)
                    return int(n)

                wait_until(lambda: sessions() >= writers, message="writer sessions")
                assert sessions() == writers
                (rows,) = conn.execute("SELECT count(*) FROM oncall_outbox").fetchone() or (None,)
                assert rows == 0  # nothing was posted: the sessions came from the start
        finally:
            box.close()

    def test_fan_out_member_refused_stores_no_row(self, dsn: str) -> None:
        """An HA target's rows are one statement: a member's row the database refuses (a trigger
        here) fails the whole post, primary included; nothing is stored, nothing half-done."""
        from concurrent.futures import Future

        from bridge.outbox_ops import resolver

        box = PgOutbox(dsn, replica_id="r1").open()
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                             " $$ BEGIN RAISE EXCEPTION 'member row refused by the test'; END $$")
                conn.execute("CREATE TRIGGER refuse_member BEFORE INSERT ON oncall_outbox FOR EACH ROW"
                             " WHEN (NEW.target = 'am@2') EXECUTE FUNCTION refuse()")
                future: "Future[int]" = Future()
                box.enqueue_with(resolver(future), "am", "k", "CRITICAL", b"{}", also=["am@2"])
                with pytest.raises(StoreError, match="refused by the test"):
                    future.result(10)
                assert conn.execute("SELECT count(*) FROM oncall_outbox").fetchone() == (0,)
                assert conn.execute("SELECT count(*) FROM oncall_queue WHERE head_seq IS NOT NULL").fetchone() == (0,)
                conn.execute("DROP TRIGGER refuse_member ON oncall_outbox")
                again: "Future[int]" = Future()
                box.enqueue_with(resolver(again), "am", "k", "CRITICAL", b"{}", also=["am@2"])
                seq = again.result(10)
                rows = conn.execute("SELECT target, seq FROM oncall_outbox ORDER BY target").fetchall()
                assert rows == [("am", seq), ("am@2", seq + 1)]
        finally:
            box.close()

    def test_resolve_from_another_replica_goes_first_within_recheck(self, replicas: List[PgOutbox]) -> None:
        """A rate-limited dispatcher reuses "no resolve ready" for RESOLVES_RECHECK; a resolve
        another replica commits meanwhile goes first after at most that long."""
        from bridge.pg.claims import RESOLVES_RECHECK

        a, b = replicas
        put(a, "x")
        first, _ = a.peek("t", time.time(), resolves_first=True)
        assert first is not None and first.key == "x"
        put(b, "y", "OK")
        deadline = time.monotonic() + RESOLVES_RECHECK + 0.5
        while True:
            head, _ = a.peek("t", time.time(), resolves_first=True)
            assert head is not None
            if head.key == "y":
                break
            assert time.monotonic() < deadline, "the resolve was not preferred within the recheck"
            time.sleep(0.02)
        assert a.claim(head)
        a.finish(head, "delivered", attempts=1)
        again, _ = a.peek("t", time.time(), resolves_first=True)
        assert again is not None and again.key == "x", "no resolve ready (and that answer reused)"
        put(a, "z", "OK")  # our own resolve becoming a head is seen at once
        nxt, _ = a.peek("t", time.time(), resolves_first=True)
        assert nxt is not None and nxt.key == "z"


class TestDatabaseDown:
    def test_outage_fails_accepts_and_resumes(self) -> None:
        """PostgreSQL down: enqueue fails (StoreError) and reachability drops; back up: all works again."""
        with PgServer() as server:
            box = PgOutbox(server.create_database(), replica_id="r", commit_timeout=2.0).open()
            try:
                put(box, "before")
                server.stop("immediate")
                with pytest.raises(StoreError):
                    put(box, "during")
                assert not box.reachable() and not box.probe(timeout=1.0)
                with pytest.raises(StoreError):
                    box.peek("t", time.time())
                server.start()
                wait_until(box.probe, timeout=20)
                put(box, "after")
                keys = []
                while (head := box.peek("t", time.time())[0]) is not None:
                    assert box.claim(head)
                    keys.append(head.key)
                    box.finish(head, "delivered", attempts=1)
                assert sorted(keys) == ["after", "before"] and box.reachable()
            finally:
                box.close()

    def test_accepting_after_a_restart_while_idle(self) -> None:
        """The writer lanes' connections died with the database while nothing was posted: the
        first posts after the restart are stored, not refused (each lane reconnects once)."""
        with PgServer() as server:
            box = PgOutbox(server.create_database(), replica_id="r", commit_timeout=2.0).open()
            try:
                keys = [f"k{i}" for i in range(8)]  # enough ids to use every lane
                for key in keys:
                    put(box, key)
                server.restart("immediate")
                wait_until(box.probe, timeout=20)
                assert all(put(box, key, "OK", 1) > 0 for key in keys)
            finally:
                box.close()

    def test_an_outcome_survives_a_database_crash(self) -> None:
        """An outcome answered as committed is flushed, by the finisher (batch) and by
        ``finish`` (one): after a crash each key's next row is its head, so the platform never
        sees a delivered event again after a newer one. (The WAL writer is slowed to its
        maximum, so an unflushed commit would be lost here.)"""
        with PgServer() as server:
            dsn = server.create_database()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
                conn.execute("SELECT pg_reload_conf()")
            box = PgOutbox(dsn, replica_id="r", commit_timeout=2.0).open()
            rows = {}
            try:
                for key in ("batched", "single"):
                    rows[key] = (put(box, key, "CRITICAL", 1), put(box, key, "OK", 2))
                heads = {}
                while (head := box.peek("t", time.time())[0]) is not None:
                    assert box.claim(head)
                    heads[head.key] = head
                assert {k: h.seq for k, h in heads.items()} == {k: first for k, (first, _) in rows.items()}
                answered = threading.Event()
                box.finish_many([Outcome(heads["batched"], "delivered", attempts=1)], lambda _o, _e: answered.set())
                assert answered.wait(10)
                box.finish(heads["single"], "delivered", attempts=1)
                server.stop("immediate")
            finally:
                box.close(timeout=2.0)
            server.start()
            with psycopg.connect(dsn) as conn:
                states = dict(conn.execute("SELECT seq, state FROM oncall_outbox").fetchall())
                queue = dict(conn.execute("SELECT key, head_seq FROM oncall_queue").fetchall())
            for key, (first, second) in rows.items():
                assert (states[first], states[second], queue[key]) == ("delivered", "pending", second), key

def pg_config(url: str, **delivery: str) -> str:
    return webhook_config(url, **delivery) + '\n[store]\nbackend = "postgres"\ndsn = "env:BRIDGE_PG_DSN"\nlease = "2s"\n'


class TestServe:
    def test_two_replicas_serve_one_database(self, tmp_path: Any, dsn: str, receiver: Receiver,
                                             make_bridge: Any) -> None:
        """Two `serve` processes: an event posted to both is accepted by both and delivered once;
        /healthz and /metrics show the replica, its singletons and the database; the DSN never shows."""
        secret = "hunter2-in-dsn"
        env = {"BRIDGE_PG_DSN": f"{dsn} password={secret}"}
        a = make_bridge(pg_config(receiver.url), env=env)
        b = make_bridge(pg_config(receiver.url), env=env)
        event = kapacitor_event("cpu:web-01", "CRITICAL")
        sa, ba = a.post_alert("hook", event)
        sb, bb = b.post_alert("hook", event)
        assert (sa, sb) == (202, 202) and ba["seq"] == bb["seq"]
        wait_until(lambda: len(receiver.requests) >= 1, timeout=15)
        time.sleep(1.0)
        assert len(receiver.requests) == 1
        status, health = a.healthz()
        assert status == 200 and health["store"]["backend"] == "postgres"
        assert health["store"]["database_reachable"] is True
        assert health["store"]["replica"].endswith(f":{a.port}")
        _, other = b.healthz()
        for job in ("expiry", "prune", "heartbeat"):
            assert health["store"]["singletons"][job] != other["store"]["singletons"][job]
        assert a.metric("oncall_database_reachable") == 1.0
        assert (a.metric("oncall_duplicate_posts_total") or 0) + (b.metric("oncall_duplicate_posts_total") or 0) == 1
        for bridge in (a, b):
            assert secret not in bridge.log_text() and secret not in bridge.metrics_text()

    def test_queue_and_replay_commands(self, dsn: str, receiver: Receiver, make_bridge: Any) -> None:
        """`queue` and `replay` work on the shared database while a replica serves."""
        receiver.default = 400
        env = {"BRIDGE_PG_DSN": dsn}
        bridge = make_bridge(pg_config(receiver.url), env=env)
        status, _ = bridge.post_alert("hook", kapacitor_event("cpu:db", "CRITICAL"))
        assert status == 202

        def dead() -> bool:
            result = bridge.cli("queue", "--json", env=env)
            return result.returncode == 0 and json.loads(result.stdout)["hook"]["dead"] == 1

        wait_until(dead, timeout=15)
        listed = bridge.cli("queue", "--dead", env=env)
        assert "cpu:db" in listed.stdout and "400" in listed.stdout
        receiver.default = 202
        replayed = bridge.cli("replay", "--target", "hook", env=env)
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout
        wait_until(lambda: len(receiver.accepted()) == 1, timeout=15)

    def test_replay_force_after_newer_event(self, dsn: str, receiver: Receiver, make_bridge: Any) -> None:
        """Issue 13's case on PostgreSQL: a dead CRITICAL whose OK was delivered is left dead by
        `replay`; `replay --force` sends it after the OK and says it re-opens the incident."""
        receiver.default = 400
        env = {"BRIDGE_PG_DSN": dsn}
        bridge = make_bridge(pg_config(receiver.url), env=env)
        assert bridge.post_alert("hook", kapacitor_event("cpu:db", "CRITICAL"))[0] == 202

        def dead() -> bool:
            result = bridge.cli("queue", "--json", env=env)
            return result.returncode == 0 and json.loads(result.stdout)["hook"]["dead"] == 1

        wait_until(dead, timeout=15)
        receiver.default = 202
        assert bridge.post_alert("hook", kapacitor_event("cpu:db", "OK"))[0] == 202
        wait_until(lambda: len(receiver.accepted()) == 1, timeout=15)
        kept = bridge.cli("replay", "--target", "hook", env=env)
        assert kept.returncode == 0 and "superseded" in kept.stdout
        forced = bridge.cli("replay", "--target", "hook", "--force", env=env)
        assert forced.returncode == 0 and "re-opens" in forced.stderr, forced
        wait_until(lambda: len(receiver.accepted()) == 2, timeout=15)
        assert [r.json()["level"] for r in receiver.accepted()] == ["OK", "CRITICAL"]


class TestConfig:
    def test_postgres_needs_a_dsn(self) -> None:
        """`backend = "postgres"` without `dsn` is refused, naming the key."""
        from bridge.config import from_mapping
        from bridge.errors import ConfigError
        from bridge.schema import ConfigErrors

        with pytest.raises((ConfigError, ConfigErrors)) as info:
            from_mapping({"store": {"backend": "postgres"}})
        assert "store.dsn" in str(info.value)

    def test_unknown_backend_refused(self) -> None:
        """Only sqlite and postgres are backends."""
        from bridge.config import from_mapping
        from bridge.errors import ConfigError
        from bridge.schema import ConfigErrors

        with pytest.raises((ConfigError, ConfigErrors)) as info:
            from_mapping({"store": {"backend": "mysql"}})
        assert "store.backend" in str(info.value) and "sqlite, postgres" in str(info.value)

    def test_dsn_and_its_password_are_secrets(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The DSN from env: and the password inside a key=value DSN are scrubbed from logs."""
        from bridge.config import from_mapping

        monkeypatch.setenv("BRIDGE_PG_DSN", "host=db.internal dbname=oncall password=s3cret-pw-1")
        config = from_mapping({"store": {"backend": "postgres", "dsn": "env:BRIDGE_PG_DSN"}})
        assert config.store.dsn == "host=db.internal dbname=oncall password=s3cret-pw-1"
        assert "s3cret-pw-1" in config.secrets and config.store.dsn in config.secrets
        assert "s3cret" not in repr(config.store)


class TestReplicaSeen:
    def test_keeper_rounds_refresh_seen_at(self, dsn: str) -> None:
        """A live replica stays "seen" (the page's Replicas card) without anyone probing /healthz."""
        box = PgOutbox(dsn, replica_id="r-seen", lease=1.0).open()
        try:
            def seen() -> float:
                with psycopg.connect(dsn) as conn:
                    row = conn.execute("SELECT seen_at FROM oncall_replica WHERE id = 'r-seen'").fetchone()
                    assert row is not None
                    return float(row[0])

            first = seen()
            wait_until(lambda: seen() > first + 0.2, timeout=10)
        finally:
            box.close()
