"""Honest answers and supervised threads (issue 12 items 5 and 6): a "NOT stored" 503 is
never followed by that alert being committed; a dead internal thread ends the process;
store operations nobody waits for fail loudly; one bad expiry cannot stop the others."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from bridge import supervise
from bridge.delivery import Delivery
from bridge.config import load
from bridge.errors import StoreError
from bridge.outbox import Outbox

from .conftest import webhook_config
from .harness import BridgeProcess, Receiver, kapacitor_event

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0


def hold_write_lock(path: str, seconds: float, started: threading.Event) -> threading.Thread:
    """Another process's connection holding BEGIN IMMEDIATE for ``seconds``."""

    def run() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        started.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    return thread


class TestWithdrawnNeverCommitted:
    def test_withdraw_before_commit(self, tmp_path: Path) -> None:
        """A queued insert withdrawn while another connection holds the write lock is never
        committed, and its caller hears an error, not a seq."""
        box = Outbox(str(tmp_path / "o.db"), clock=lambda: NOW).open()
        try:
            results: List[Tuple[Any, Optional[BaseException]]] = []
            done = threading.Event()

            def callback(result: Any, error: Optional[BaseException]) -> None:
                results.append((result, error))
                done.set()

            holder = hold_write_lock(box.path, 1.5, threading.Event())
            ticket = box.enqueue_with(callback, "t", "k", "CRITICAL", b"{}")
            time.sleep(0.3)
            assert ticket.withdraw()
            holder.join()
            assert done.wait(15)
            assert results[0][0] is None and isinstance(results[0][1], StoreError)
            box.check_external(wait=True)
            conn = sqlite3.connect(box.path)
            assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
            conn.close()
            assert box.enqueue("t", "k2", "CRITICAL", b"{}").result(10) >= 1
        finally:
            box.close()

    def test_sealed_cannot_be_withdrawn(self, tmp_path: Path) -> None:
        """Once committed (or being committed), withdraw answers False: the outcome is the commit's."""
        box = Outbox(str(tmp_path / "o.db"), clock=lambda: NOW).open()
        try:
            future_seq: List[int] = []
            ticket = box.enqueue_with(lambda r, e: future_seq.append(r), "t", "k", "CRITICAL", b"{}")
            box.check_external(wait=True)
            assert future_seq and not ticket.withdraw()
        finally:
            box.close()

    def test_503_not_stored_is_true(self, receiver: Receiver, make_bridge: Callable[..., BridgeProcess]) -> None:
        """Issue 12 item 5: another connection holds BEGIN IMMEDIATE for 13 s (past the 10 s commit
        timeout); the bridge answers 503 "NOT stored" and, after the lock goes, that alert is
        neither in the store nor delivered. Later alerts go through."""
        bridge = make_bridge(webhook_config(receiver.url + "/hook"))
        assert bridge.post_alert("hook", kapacitor_event("before"))[0] == 202
        receiver.wait_for(1)
        holder = hold_write_lock(str(bridge.db_path), 13.0, threading.Event())
        started = time.monotonic()
        status, answer = bridge.post_alert("hook", kapacitor_event("during"), timeout=30)
        waited = time.monotonic() - started
        assert status == 503 and "NOT stored" in answer["error"], answer
        assert waited < 13.0, "answered only after the lock went: the test proves nothing"
        holder.join()
        assert bridge.post_alert("hook", kapacitor_event("after"))[0] == 202
        receiver.wait_for(2)
        time.sleep(1.0)
        assert [r.json()["id"] for r in receiver.requests] == ["before", "after"]
        conn = sqlite3.connect(bridge.db_path)
        ids = [r[0] for r in conn.execute("SELECT key FROM outbox ORDER BY seq")]
        conn.close()
        assert ids == ["before", "after"]
        assert bridge.metric("oncall_alerts_received_total", {"target": "hook", "outcome": "store_error"}) == 1


@pytest.fixture
def deaths(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[int]]:
    """Record process exits instead of exiting the test runner."""
    seen: List[int] = []
    monkeypatch.setattr(supervise, "exit_process", seen.append)
    yield seen


class TestThreadDeath:
    def test_writer_death_exits(self, tmp_path: Path, deaths: List[int], monkeypatch: pytest.MonkeyPatch) -> None:
        """A writer that dies (an exception outside its per-batch guard) ends the process with 70."""
        box = Outbox(str(tmp_path / "o.db"), clock=lambda: NOW).open()

        def broken(batch: Any) -> None:
            raise MemoryError("simulated")

        monkeypatch.setattr(box, "_commit", broken)
        box.enqueue_with(lambda r, e: None, "t", "k", "CRITICAL", b"{}")
        assert box._writer is not None
        box._writer.join(5)
        assert deaths == [supervise.EXIT_THREAD_DIED]
        box._closed = True

    def test_writer_death_real_process(self, tmp_path: Path) -> None:
        """In a real process the death is one clear log line and exit status 70."""
        script = textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from bridge.log import configure
            configure("info")
            from bridge.outbox import Outbox
            box = Outbox({str(tmp_path / "p.db")!r}).open()
            def broken(batch):
                raise RuntimeError("simulated writer bug")
            box._commit = broken
            box.enqueue_with(lambda r, e: None, "t", "k", "CRITICAL", b"{{}}")
            time.sleep(10)
            print("still alive")
            """
        )
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert proc.returncode == supervise.EXIT_THREAD_DIED, proc.stdout + proc.stderr
        assert "still alive" not in proc.stdout
        assert "thread.died" in proc.stderr and "outbox-writer" in proc.stderr
        assert "simulated writer bug" in proc.stderr

    def _delivery(self, tmp_path: Path, url: str) -> Tuple[Delivery, Outbox]:
        cfg_path = tmp_path / "b.toml"
        cfg_path.write_text(webhook_config(url) + f'\n[store]\npath = "{tmp_path / "d.db"}"\n')
        config = load(str(cfg_path))
        box = Outbox(config.store.path).open()
        return Delivery(config, box), box

    @pytest.mark.parametrize("part", ["_dispatch", "engine._run"])
    def test_delivery_thread_death_exits(
        self, tmp_path: Path, deaths: List[int], monkeypatch: pytest.MonkeyPatch, receiver: Receiver, part: str
    ) -> None:
        """The dispatcher or the delivery loop's thread raising out of its loop ends the process."""
        delivery, box = self._delivery(tmp_path, receiver.url + "/hook")
        try:
            def broken() -> None:
                raise RuntimeError(f"simulated {part} bug")

            owner = delivery.engine if part.startswith("engine.") else delivery
            monkeypatch.setattr(owner, part.split(".")[-1], broken)
            delivery.start()
            deadline = time.monotonic() + 5
            while not deaths and time.monotonic() < deadline:
                time.sleep(0.02)
            assert deaths and set(deaths) == {supervise.EXIT_THREAD_DIED}
        finally:
            delivery.stop(5)
            box.close()

    def test_clean_stop_is_not_a_death(self, tmp_path: Path, deaths: List[int], receiver: Receiver) -> None:
        """Threads that end because the bridge stops are not reported."""
        delivery, box = self._delivery(tmp_path, receiver.url + "/hook")
        delivery.start()
        assert delivery.stop(10)
        box.close()
        assert deaths == []


class TestSilentFailures:
    def test_failed_ops_logged_and_counted(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A failing operation without a callback (prune, inflight mark, expiries) is counted in
        stats (exported as oncall_store_op_failures_total) and logged, never dropped silently."""
        box = Outbox(str(tmp_path / "o.db"), clock=lambda: NOW).open()
        try:
            import bridge.outbox_upkeep as ops

            def broken_apply(self: Any, box_: Any, cur: Any) -> Any:
                raise sqlite3.OperationalError("disk I/O error")

            monkeypatch.setattr(ops._Prune, "apply", broken_apply)
            box.prune(10)
            box.prune(10)
            box.check_external(wait=True)
            stats = box.stats()
            assert stats.failed_ops.get("Prune") == 2
        finally:
            box.close()

    def test_one_bad_expiry_does_not_block_others(self, tmp_path: Path) -> None:
        """An auto-resolve timer whose resolve cannot be made is retried later; the others fire."""
        clock = [NOW]
        box = Outbox(str(tmp_path / "o.db"), clock=lambda: clock[0]).open()
        try:
            for key in ("bad", "good1", "good2"):
                box.enqueue("t", key, "CRITICAL", b"{}", expire_after=10).result(5)
            clock[0] = NOW + 20

            def make(target: str, key: str, body: bytes, now: float) -> Optional[bytes]:
                if key == "bad":
                    raise ValueError("simulated formatter bug")
                return b'{"level":"OK"}'

            fired = box.fire_expiries(make, wait=True)
            assert sorted(k for _s, _t, k in fired) == ["good1", "good2"]
            assert box.stats().failed_ops.get("Expiry") == 1
            conn = sqlite3.connect(box.path)
            due = conn.execute("SELECT key, due_at FROM expiry").fetchall()
            conn.close()
            assert due == [("bad", NOW + 20 + 60.0)]
            assert box.fire_expiries(make, wait=True) == []
            clock[0] = NOW + 100
            fired = box.fire_expiries(lambda t, k, b, n: b'{"level":"OK"}', wait=True)
            assert [k for _s, _t, k in fired] == ["bad"]
        finally:
            box.close()

    def test_failed_inflight_mark_does_not_block_key(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """If the 'inflight' mark of a claim fails, finishing the claim still works and the
        next row of the key follows."""
        import bridge.outbox as outbox_mod

        box = Outbox(str(tmp_path / "o.db"), clock=lambda: NOW).open()
        try:
            box.enqueue("t", "k", "CRITICAL", b"{}").result(5)
            box.enqueue("t", "k", "OK", b"{}").result(5)

            def broken(cur: Any, ops_: Any) -> Any:
                raise sqlite3.OperationalError("disk I/O error")

            monkeypatch.setattr(outbox_mod, "_mark_inflight", broken)
            head, _ = box.peek("t", NOW)
            assert head is not None and box.claim(head)
            box.check_external(wait=True)
            assert box.stats().failed_ops.get("SetInflight") == 1
            monkeypatch.undo()
            box.finish(head, "delivered", attempts=1)
            nxt, _ = box.peek("t", NOW)
            assert nxt is not None and nxt.level == "OK"
            row = box.load(head.seq)
            assert row is not None and row.state == "delivered"
        finally:
            box.close()




def test_dispatcher_crash_loop_exits(tmp_path: Path, deaths: List[int], monkeypatch: pytest.MonkeyPatch,
                                     receiver: Receiver) -> None:
    """A dispatch loop that keeps crashing is retried a few times, then the process exits."""
    import bridge.delivery as delivery_mod

    cfg_path = tmp_path / "b.toml"
    cfg_path.write_text(webhook_config(receiver.url + "/hook") + f'\n[store]\npath = "{tmp_path / "d.db"}"\n')
    box = Outbox(load(str(cfg_path)).store.path).open()
    delivery = Delivery(load(str(cfg_path)), box)
    calls: List[float] = []

    def broken() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("simulated dispatcher bug")

    monkeypatch.setattr(delivery, "_dispatch_loop", broken)
    monkeypatch.setattr(delivery_mod, "DISPATCHER_CRASHES", 3)
    try:
        delivery.start()
        deadline = time.monotonic() + 10
        while not deaths and time.monotonic() < deadline:
            time.sleep(0.05)
        assert deaths == [supervise.EXIT_THREAD_DIED] and len(calls) == 3
    finally:
        delivery.stop(5)
        box.close()


class TestHaFanOutAnswer:
    def test_member_row_failing_stores_no_row_at_all(
        self, receiver: Receiver, make_bridge: Callable[..., BridgeProcess]
    ) -> None:
        """An Alertmanager HA target (``urls``) stores one row per member, all in one commit. When
        a member's insert fails (a real SQLite error: a trigger refusing that member's rows), the
        primary's row is not stored either: the answer is an honest 503 "NOT stored" for the whole
        target, nothing is delivered, and once the fault is gone the retry gets 202 and one row
        per member."""
        config = f"""
[delivery]
backoff_initial = "50ms"
backoff_max = "200ms"
timeout = "2s"

[[target]]
name = "am"
type = "alertmanager"
url = "{receiver.url}/one"
urls = ["{receiver.url}/two"]
"""
        bridge = make_bridge(config)
        conn = sqlite3.connect(bridge.db_path, isolation_level=None, timeout=30)
        conn.execute(
            "CREATE TRIGGER refuse_member BEFORE INSERT ON outbox WHEN NEW.target = 'am@2'"
            " BEGIN SELECT RAISE(ABORT, 'member row refused by the test'); END"
        )
        status, answer = bridge.post_alert("am", kapacitor_event("web-1"), timeout=30)
        assert status == 503, answer
        assert "NOT stored" in answer["error"], answer
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,), "no row of any member"
        assert bridge.metric("oncall_alerts_received_total", {"target": "am", "outcome": "store_error"}) == 1
        conn.execute("DROP TRIGGER refuse_member")
        status, answer = bridge.post_alert("am", kapacitor_event("web-1"), timeout=30)
        assert status == 202, answer
        rows = conn.execute("SELECT target, key FROM outbox ORDER BY target").fetchall()
        assert rows == [("am", "web-1"), ("am@2", "web-1")]
        got = receiver.wait_for(2)
        assert sorted(r.path.split("/")[1] for r in got) == ["one", "two"], "each member gets the event once"
        conn.close()
