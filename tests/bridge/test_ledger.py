"""Schema migrations and the incident ledger: what each platform was last told, on file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator, Optional

import pytest

from bridge.errors import StoreError
from bridge.outbox import Outbox
from bridge.store import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, Head, _statements, open_store

from .test_outbox import Clock, put, take

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def box(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    outbox = Outbox(str(tmp_path / "o.db"), clock=clock).open()
    yield outbox
    outbox.close()


def deliver(box: Outbox, key: str, level: str, target: str = "t") -> Head:
    put(box, key, level, target=target)
    head = take(box, target)
    assert head is not None and head.key == key and head.level == level
    box.finish(head, "delivered", attempts=1, status=202)
    return head


def make_v1(path: Path) -> None:
    """A store as version 1 of the bridge wrote it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    for statement in _statements(MIGRATIONS[0][1]):
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.execute("COMMIT")
    rows = [
        ("t", "a", "CRITICAL", "delivered"),
        ("t", "a", "WARNING", "delivered"),
        ("t", "b", "CRITICAL", "delivered"),
        ("t", "b", "OK", "delivered"),
        ("t", "c", "CRITICAL", "dead"),
        ("t", "d", "WARNING", "pending"),
    ]
    for target, key, level, state in rows:
        conn.execute(
            "INSERT INTO outbox (target, key, level, body, received_at, queued_at, state, next_attempt_at, done_at)"
            " VALUES (?, ?, ?, ?, 1.0, 1.0, ?, 1.0, 2.0)",
            (target, key, level, f'{{"id":"{key}","level":"{level}"}}'.encode(), state),
        )
    # A pruned newer row: the AUTOINCREMENT counter is past every seq on file.
    conn.execute("UPDATE sqlite_sequence SET seq = 500 WHERE name = 'outbox'")
    conn.close()


class TestMigrations:
    def test_fresh_file_is_current(self, tmp_path: Path) -> None:
        """A new store is created at the newest schema version with our application id."""
        conn = open_store(str(tmp_path / "n.db"))
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"outbox", "ledger", "expiry", "last_forwarded", "meta"} <= tables
        conn.close()

    def test_versions_are_ordered(self) -> None:
        """Migrations are numbered 1, 2, ... with no gap, and the last one is SCHEMA_VERSION."""
        assert [v for v, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
        assert SCHEMA_VERSION == MIGRATIONS[-1][0]

    def test_v1_upgrades_in_place(self, tmp_path: Path, clock: Clock) -> None:
        """A version 1 file keeps every row, gains the ledger (seeded from deliveries) and
        never reuses a seq."""
        path = tmp_path / "v1.db"
        make_v1(path)
        box = Outbox(str(path), clock=clock).open()
        try:
            conn = sqlite3.connect(path)
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            states = sorted(r[0] for r in conn.execute("SELECT state FROM outbox"))
            assert states == ["dead", "delivered", "delivered", "delivered", "delivered", "pending"]
            conn.close()
            open_now = box.incidents("t")
            assert [(i.key, i.level) for i in open_now] == [("a", "WARNING")]
            assert box.told("t", "b") is None
            seq = put(box, "e")
            assert seq == 501
            head = take(box)
            assert head is not None and head.key == "d"
        finally:
            box.close()

    def test_newer_file_refused(self, tmp_path: Path) -> None:
        """A file from a newer bridge is refused, not touched."""
        path = tmp_path / "new.db"
        open_store(str(path)).close()
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        conn.close()
        with pytest.raises(StoreError, match="newer than this bridge"):
            open_store(str(path))

    def test_failed_upgrade_leaves_v1_whole(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An upgrade that fails half-way rolls back: the file is still a good version 1 store."""
        path = tmp_path / "v1.db"
        make_v1(path)
        import bridge.store as store

        broken = MIGRATIONS + [(SCHEMA_VERSION + 1, "CREATE TABLE ledger (x);")]
        monkeypatch.setattr(store, "MIGRATIONS", broken)
        monkeypatch.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        with pytest.raises(StoreError, match="schema upgrade"):
            open_store(str(path))
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 6
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'ledger'").fetchone()[0] == 0
        conn.close()


class TestLedger:
    def test_trigger_escalate_resolve(self, box: Outbox, clock: Clock) -> None:
        """Non-OK deliveries open and extend the incident; OK closes it."""
        first = deliver(box, "cpu:a", "WARNING")
        opened = clock.now
        clock.now += 10
        second = deliver(box, "cpu:a", "CRITICAL")
        clock.now += 10
        deliver(box, "cpu:a", "WARNING")
        inc = box.told("t", "cpu:a")
        assert inc is not None
        assert inc.level == "WARNING" and inc.fired_levels == ("WARNING", "CRITICAL")
        assert inc.opened_at == opened and inc.told_at == clock.now and inc.seq > second.seq > first.seq
        assert b'"level":"WARNING"' in inc.body
        deliver(box, "cpu:a", "OK")
        assert box.told("t", "cpu:a") is None and box.incidents() == []
        deliver(box, "cpu:a", "INFO")
        reopened = box.told("t", "cpu:a")
        assert reopened is not None and reopened.fired_levels == ("INFO",) and reopened.opened_at == clock.now

    def test_only_deliveries_count(self, box: Outbox) -> None:
        """Dead, suppressed and retried rows never reach the ledger."""
        for state in ("dead", "suppressed"):
            put(box, f"k-{state}")
            head = take(box)
            assert head is not None
            box.finish(head, state)
        put(box, "k-retry")
        head = take(box)
        assert head is not None
        box.finish(head, "pending", attempts=1, next_at=box._clock() + 60)
        assert box.incidents() == []

    def test_incidents_by_target(self, box: Outbox) -> None:
        """``incidents(target)`` filters; ``incidents()`` lists every target's."""
        deliver(box, "a", "CRITICAL", target="t1")
        deliver(box, "b", "CRITICAL", target="t2")
        assert [i.target for i in box.incidents()] == ["t1", "t2"]
        assert [i.key for i in box.incidents("t2")] == ["b"]

    def test_idle_and_hold(self, box: Outbox) -> None:
        """Busy or pending keys are not idle; held keys are not claimable until released."""
        deliver(box, "a", "CRITICAL")
        assert box.idle("t", "a")
        put(box, "b")
        assert not box.idle("t", "b")
        with box.hold("t", ["a", "b"]) as held:
            assert held == ["a"]
            assert not box.idle("t", "a")
            put(box, "a", "OK")
            head = take(box)
            assert head is not None and head.key == "b"
            assert take(box) is None
        head = take(box)
        assert head is not None and head.key == "a" and head.level == "OK"

    def test_synthetic_flag_stored(self, box: Outbox) -> None:
        """``enqueue(..., synthetic=True)`` marks the row as the bridge's own."""
        seq = box.enqueue("t", "a", "OK", b"{}", synthetic=True).result(5)
        row = box.load(seq)
        assert row is not None and row.synthetic

    def test_survives_kill_9(self, tmp_path: Path) -> None:
        """A delivery that returned is in the ledger after the process is killed with SIGKILL."""
        path = tmp_path / "k.db"
        script = textwrap.dedent(
            f"""
            import os, signal, sys
            sys.path.insert(0, {str(ROOT)!r})
            from bridge.outbox import Outbox
            box = Outbox({str(path)!r}).open()
            box.enqueue("t", "a", "CRITICAL", b'{{"id":"a"}}').result(5)
            head, _ = box.peek("t", 2e9)
            assert box.claim(head)
            box.finish(head, "delivered", attempts=1, status=202)
            print("told", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert proc.returncode == -signal.SIGKILL and "told" in proc.stdout, proc.stderr
        box = Outbox(str(path)).open()
        try:
            incident: Optional[object] = box.told("t", "a")
            assert incident is not None
            assert [i.key for i in box.incidents()] == ["a"]
        finally:
            box.close()
        assert os.path.exists(path)
