"""`move` and `drop` on the PostgreSQL store: they run beside serving replicas (a real server)."""

from __future__ import annotations

import threading
import time
from typing import Any, List, Tuple

import psycopg
import pytest

from bridge.errors import StoreError
from bridge.pg import PgOutbox, admin, retarget
from tests.pgserver import PgServer

from .conftest import webhook_config
from .harness import BridgeProcess, Receiver, kapacitor_event, wait_until


@pytest.fixture
def dsn(pg_server: PgServer) -> str:
    return pg_server.create_database("retarget")


def pg_config(url: str, name: str) -> str:
    return (webhook_config(url, name=name, backoff_initial="5s", backoff_max="5s")
            + '\n[store]\nbackend = "postgres"\ndsn = "env:BRIDGE_PG_DSN"\nlease = "2s"\n')


def put(box: PgOutbox, target: str, key: str, level: str, n: int) -> int:
    body = f'{{"id":"{key}","level":"{level}","time":"2026-01-01T00:00:{n:02d}Z"}}'.encode()
    return box.enqueue(target, key, level, body).result(10)


def drain(box: PgOutbox, target: str, n: int) -> List[Tuple[str, int]]:
    """Claim and deliver ``n`` heads of ``target``, as a replica would: (key, seq) in order."""
    out: List[Tuple[str, int]] = []
    deadline = time.monotonic() + 15
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {out} delivered"
        head = box.peek(target, time.time())[0]
        if head is None:
            time.sleep(0.02)
            continue
        assert box.claim(head)
        out.append((head.key, head.seq))
        box.finish(head, "delivered", attempts=1)
    return out


class TestStore:
    def test_refused_while_in_flight_then_done(self, dsn: str) -> None:
        """A row some replica is delivering is never pulled from under it: both commands refuse,
        naming the replica; once the attempt is recorded they go through."""
        box = PgOutbox(dsn, replica_id="r1", lease=30.0).open()
        try:
            put(box, "old", "a", "CRITICAL", 1)
            put(box, "old", "a", "OK", 2)
            head = box.peek("old", time.time())[0]
            assert head is not None and box.claim(head)
            conn = admin.open_admin(dsn)
            try:
                for attempt in (lambda: retarget.drop_target(conn, "old"),
                                lambda: retarget.move_target(conn, "old", "new")):
                    with pytest.raises(StoreError, match=r"1 row\(s\) of target 'old' are being delivered.*r1"):
                        attempt()
                box.finish(head, "delivered", attempts=1)
                wait_until(lambda: admin.queue_counts(conn).get(("old", "delivered")) == 1, timeout=10)
                dropped = retarget.drop_target(conn, "old")
                assert dropped.rows == {"delivered": 1, "pending": 1} and dropped.incidents == 1
                assert admin.queue_counts(conn) == {}
            finally:
                conn.close()
        finally:
            box.close()

    def test_move_merges_histories_in_seq_order(self, dsn: str) -> None:
        """An id queued under both names is delivered in seq order across both; ids only the old
        name had keep their queue; the old name is left with nothing."""
        box = PgOutbox(dsn, replica_id="r1", lease=30.0).open()
        try:
            seqs = [put(box, "old", "a", "WARNING", 1), put(box, "new", "a", "CRITICAL", 2),
                    put(box, "old", "a", "OK", 3), put(box, "old", "b", "CRITICAL", 4)]
            conn = admin.open_admin(dsn)
            try:
                moved = retarget.move_target(conn, "old", "new")
                assert moved.rows == {"pending": 3}
                with pytest.raises(StoreError, match="same target"):
                    retarget.move_target(conn, "new", "new")
            finally:
                conn.close()
            delivered = drain(box, "new", 4)
            assert [s for k, s in delivered if k == "a"] == [seqs[0], seqs[1], seqs[2]]
            assert [s for k, s in delivered if k == "b"] == [seqs[3]]
            assert box.peek("old", time.time()) == (None, None)
        finally:
            box.close()


    def test_move_while_the_new_name_is_being_inserted(self, dsn: str) -> None:
        """A replica serving the new name creates the key's queue row while the move runs: the
        move waits for it and merges, instead of failing on the duplicate row."""
        box = PgOutbox(dsn, replica_id="r1", lease=30.0).open()
        try:
            seq = put(box, "old", "a", "CRITICAL", 1)
            inserting = psycopg.connect(dsn)
            inserting.execute("INSERT INTO oncall_queue (target, key) VALUES ('new', 'a')")  # not committed yet
            outcome: List[Any] = []

            def move() -> None:
                conn = admin.open_admin(dsn)
                try:
                    outcome.append(retarget.move_target(conn, "old", "new"))
                except Exception as exc:  # noqa: BLE001 - reported below
                    outcome.append(exc)
                finally:
                    conn.close()

            mover = threading.Thread(target=move)
            mover.start()
            time.sleep(0.5)
            inserting.commit()
            inserting.close()
            mover.join(10)
            assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
            assert outcome[0].rows == {"pending": 1}
            assert drain(box, "new", 1) == [("a", seq)]
        finally:
            box.close()


class TestBesideReplicas:
    def _orphans(self, make_bridge: Any, platform: Receiver, env: Any) -> BridgeProcess:
        """Three alerts stored for target `old`, then the replica serves with `old` renamed `new`."""
        bridge = make_bridge(pg_config(platform.url + "/hook", "old"), env=env)
        platform.stop()
        for key in ("a", "b", "c"):
            assert bridge.post_alert("old", kapacitor_event(key))[0] == 202
        bridge.stop()
        text = bridge.config_path.read_text()
        bridge.config_path.write_text(text.replace('name = "old"', 'name = "new"'))
        bridge.start()
        return bridge

    def test_move_while_serving(self, dsn: str, make_bridge: Any) -> None:
        """No stop needed on PostgreSQL: the serving replica delivers the moved rows at once."""
        platform = Receiver()
        env = {"BRIDGE_PG_DSN": dsn}
        bridge = self._orphans(make_bridge, platform, env)
        platform.up()
        try:
            moved = bridge.cli("move", "--from", "old", "--to", "new")
            assert moved.returncode == 0, moved.stderr
            assert "moved 3 row(s) from 'old' to 'new' (3 pending)" in moved.stdout
            platform.wait_for(3, timeout=20)
            assert sorted(r.json()["id"] for r in platform.requests) == ["a", "b", "c"]
            assert "nothing to move" in bridge.cli("move", "--from", "old", "--to", "new").stdout
        finally:
            platform.stop()

    def test_drop_while_serving(self, dsn: str, make_bridge: Any) -> None:
        platform = Receiver()
        env = {"BRIDGE_PG_DSN": dsn}
        bridge = self._orphans(make_bridge, platform, env)
        dropped = bridge.cli("drop", "--target", "old")
        assert dropped.returncode == 0, dropped.stderr
        assert "dropped 3 row(s) of 'old' (3 pending)" in dropped.stdout
        assert "nothing to drop" in bridge.cli("drop", "--target", "old").stdout
        wait_until(lambda: bridge.metric("oncall_outbox_orphaned") == 0, timeout=10)
