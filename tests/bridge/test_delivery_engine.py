"""The delivery engine hands outcomes to the store without waiting for their commit.

Workers move on at once, but the key stays busy until the outcome is durable: the next
event of the id is never sent before it; a failed commit is handed again (key still
busy) until it sticks; ``stop()`` returns only when every outcome handed is durable."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from bridge.config import load
from bridge.delivery import Delivery
from bridge.errors import StoreError
from bridge.outbox import Outbox
from bridge.store import Outcome

from .conftest import webhook_config
from .harness import Receiver, Recorded, Reply, kapacitor_event


class FailingCommits:
    """A real :class:`Outbox` whose first ``fail`` outcomes are reported as failed commits
    (never submitted); records when each outcome became durable."""

    def __init__(self, box: Outbox, fail: int) -> None:
        self.box = box
        self.fail = fail
        self.failed: List[Tuple[int, str]] = []
        self.durable: Dict[int, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.box, name)

    def finish_many(self, outcomes: Sequence[Outcome], done: Callable[[Outcome, Optional[BaseException]], None]) -> None:
        passed: List[Outcome] = []
        for o in outcomes:
            if len(self.failed) < self.fail:
                self.failed.append((o.head.seq, o.state))
                done(o, StoreError("injected: commit failed"))
            else:
                passed.append(o)

        def durable(o: Outcome, error: Optional[BaseException]) -> None:
            if error is None:
                self.durable[o.head.seq] = time.monotonic()
            done(o, error)

        self.box.finish_many(passed, durable)


def _setup(tmp_path: Path, url: str, fail: int) -> Tuple[Delivery, Outbox, FailingCommits]:
    cfg_path = tmp_path / "b.toml"
    cfg_path.write_text(webhook_config(url) + f'\n[store]\npath = "{tmp_path / "d.db"}"\n')
    config = load(str(cfg_path))
    box = Outbox(config.store.path).open()
    store = FailingCommits(box, fail)
    return Delivery(config, store), box, store  # type: ignore[arg-type]


def _states(box: Outbox) -> List[str]:
    return [r.state for r in (box.load(seq) for seq in range(1, 3)) if r is not None]


def test_failed_commit_is_retried_and_holds_the_key(tmp_path: Path, receiver: Receiver) -> None:
    """The trigger's outcome fails to commit twice: it is handed again until durable, and the
    resolve of the same id goes out only after that."""
    delivery, box, store = _setup(tmp_path, receiver.url + "/hook", fail=2)
    try:
        for level, prev in (("CRITICAL", "OK"), ("OK", "CRITICAL")):
            body = json.dumps(kapacitor_event("cpu:host=a", level, previous_level=prev)).encode()
            box.enqueue("hook", "cpu:host=a", level, body).result(5)
        delivery.start()
        got = receiver.wait_for(2)
        assert [r.json()["level"] for r in got] == ["CRITICAL", "OK"]
        assert store.failed == [(1, "delivered"), (1, "delivered")]
        deadline = time.monotonic() + 5
        while _states(box) != ["delivered", "delivered"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _states(box) == ["delivered", "delivered"]
        assert got[1].at > store.durable[1], "the resolve went out before the trigger's outcome was durable"
        assert len(receiver.accepted()) == 2  # a failed commit of the outcome does not resend
    finally:
        delivery.stop(5)
        box.close()


def test_stop_waits_until_outcomes_are_durable(tmp_path: Path, receiver: Receiver) -> None:
    """When stop() returns, every delivery that reached the platform is recorded in the file."""
    delivery, box, _store = _setup(tmp_path, receiver.url + "/hook", fail=0)
    try:
        for i in range(40):
            body = json.dumps(kapacitor_event(f"cpu:host=h{i}", "CRITICAL")).encode()
            box.enqueue("hook", f"cpu:host=h{i}", "CRITICAL", body).result(5)
        delivery.start()
        receiver.wait_for(40)
        assert delivery.stop(10)
        sent = {r.json()["id"] for r in receiver.accepted()}
        for seq in range(1, 41):
            row = box.load(seq)
            assert row is not None
            if row.key in sent:
                assert row.state == "delivered", (seq, row.state)
    finally:
        box.close()


def _two_targets(tmp_path: Path, slow_url: str, fast_url: str, workers: int) -> Tuple[Delivery, Outbox]:
    cfg_path = tmp_path / "b.toml"
    cfg_path.write_text(
        f'[delivery]\nworkers = {workers}\ntimeout = "5s"\nrepeat_interval = "0s"\n\n'
        f'[[target]]\nname = "slow"\ntype = "webhook"\nurl = "{slow_url}"\n\n'
        f'[[target]]\nname = "fast"\ntype = "webhook"\nurl = "{fast_url}"\n\n'
        f'[store]\npath = "{tmp_path / "d.db"}"\n'
    )
    config = load(str(cfg_path))
    box = Outbox(config.store.path).open()
    return Delivery(config, box), box


class Arrivals:
    """A receiver handler answering 202 after ``delay``; records each request on arrival
    (the receiver itself records a request only once answered)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.paths: List[str] = []

    def __call__(self, rec: Recorded) -> Reply:
        self.paths.append(rec.path)
        return Reply(202, delay=self.delay)


def _post(box: Outbox, target: str, key: str) -> None:
    body = json.dumps(kapacitor_event(key, "CRITICAL")).encode()
    box.enqueue(target, key, "CRITICAL", body).result(5)


def test_attempts_in_flight_are_bounded_per_target(tmp_path: Path) -> None:
    """``workers`` bounds the attempts in flight, and with several targets a hanging platform
    holds at most half of them: the other target's alerts go out at once meanwhile."""
    arrivals = Arrivals(1.5)
    slow = Receiver(handler=arrivals)
    fast = Receiver()
    delivery, box = _two_targets(tmp_path, slow.url + "/s", fast.url + "/f", workers=4)
    try:
        for i in range(8):
            _post(box, "slow", f"cpu:host=s{i}")
        for i in range(5):
            _post(box, "fast", f"cpu:host=f{i}")
        started = time.monotonic()
        delivery.start()
        fast.wait_for(5, timeout=1.2)
        assert time.monotonic() - started < 1.2, "the fast target waited behind the hanging one"
        time.sleep(0.3)
        # The slow platform holds 2 of the 4 slots (its share), none answered yet.
        assert len(arrivals.paths) == 2 and slow.requests == [], arrivals.paths
        slow.wait_for(8, timeout=15)
    finally:
        delivery.stop(10)
        box.close()
        slow.stop()
        fast.stop()


def test_one_target_may_use_every_slot(tmp_path: Path) -> None:
    """Alone, a target may have ``workers`` attempts in flight, and not more."""
    arrivals = Arrivals(1.0)
    slow = Receiver(handler=arrivals)
    cfg_path = tmp_path / "b.toml"
    cfg_path.write_text(webhook_config(slow.url + "/s", workers="3", timeout="5s", repeat_interval="0s")
                        .replace('workers = "3"', "workers = 3") + f'\n[store]\npath = "{tmp_path / "d.db"}"\n')
    config = load(str(cfg_path))
    box = Outbox(config.store.path).open()
    delivery = Delivery(config, box)
    try:
        for i in range(7):
            _post(box, "hook", f"cpu:host=h{i}")
        delivery.start()
        time.sleep(0.7)
        assert len(arrivals.paths) == 3
        slow.wait_for(7, timeout=15)
        assert delivery.stop(10)
        rows = box.load_many(list(range(1, 8)))
        assert sorted(r.state for r in rows.values()) == ["delivered"] * 7
    finally:
        delivery.stop(1)
        box.close()
        slow.stop()


class FailsOnce:
    """A real :class:`Outbox` whose ``method`` fails like a store error on its ``call``-th call."""

    def __init__(self, box: Outbox, method: str, call: int) -> None:
        self.box = box
        self.method = method
        self.call = call
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.box, name)
        if name != self.method:
            return real

        def failing(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.call:
                raise StoreError(f"injected: {name} failed")
            return real(*args, **kwargs)

        return failing


@pytest.mark.parametrize("method, call", [
    ("load_many", 1),  # the claimed rows could not be read: given back, delivered on a later round
    ("peek", 2),       # a claim failed after the round's first head was claimed (PostgreSQL losing its connection)
])
def test_a_store_error_in_a_round_strands_nothing(tmp_path: Path, receiver: Receiver, method: str, call: int) -> None:
    """Heads a round claimed before a store error are delivered (their ids do not stay busy,
    their slots are not lost), on their first attempt."""
    cfg_path = tmp_path / "b.toml"
    cfg_path.write_text(webhook_config(receiver.url + "/hook") + f'\n[store]\npath = "{tmp_path / "d.db"}"\n')
    config = load(str(cfg_path))
    box = Outbox(config.store.path).open()
    store = FailsOnce(box, method, call)
    delivery = Delivery(config, store)  # type: ignore[arg-type]
    try:
        for i in range(3):
            _post(box, "hook", f"cpu:host=h{i}")
        delivery.start()
        got = receiver.wait_for(3, timeout=10)
        assert store.calls >= call and sorted(r.json()["id"] for r in got) == [f"cpu:host=h{i}" for i in range(3)]
        assert delivery.stop(10)
        rows = box.load_many([1, 2, 3])
        assert [(r.state, r.attempts) for r in rows.values()] == [("delivered", 1)] * 3
    finally:
        delivery.stop(1)
        box.close()


class LaggingCommits:
    """A real :class:`Outbox` whose outcome commits are held back until :meth:`catch_up`."""

    def __init__(self, box: Outbox) -> None:
        self.box = box
        self.held: List[Tuple[List[Outcome], Callable[[Outcome, Optional[BaseException]], None]]] = []
        self.lagging = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.box, name)

    def finish_many(self, outcomes: Sequence[Outcome], done: Callable[[Outcome, Optional[BaseException]], None]) -> None:
        if self.lagging:
            self.held.append((list(outcomes), done))
        else:
            self.box.finish_many(outcomes, done)

    def catch_up(self) -> None:
        self.lagging = False
        held, self.held = self.held, []
        for outcomes, done in held:
            self.box.finish_many(outcomes, done)


def test_sends_pause_while_outcomes_wait_for_their_commit(tmp_path: Path, receiver: Receiver) -> None:
    """A send whose outcome is not durable is sent again after a crash, so once twice ``workers``
    outcomes wait for their commit nothing new goes out: with the attempts that were in flight,
    fewer than three times ``workers`` sends are ever at stake. When the store catches up,
    everything goes."""
    cfg_path = tmp_path / "b.toml"
    cfg_path.write_text(webhook_config(receiver.url + "/hook", repeat_interval="0s")
                        .replace("[delivery]\n", "[delivery]\nworkers = 4\n") + f'\n[store]\npath = "{tmp_path / "d.db"}"\n')
    config = load(str(cfg_path))
    box = Outbox(config.store.path).open()
    store = LaggingCommits(box)
    delivery = Delivery(config, store)  # type: ignore[arg-type]
    try:
        for i in range(40):
            _post(box, "hook", f"cpu:host=h{i}")
        delivery.start()
        receiver.wait_for(8)
        time.sleep(0.5)
        sent = len(receiver.requests)
        assert 2 * 4 <= sent < 3 * 4, f"{sent} sent while their outcomes waited for the store"
        assert sum(len(outcomes) for outcomes, _done in store.held) == sent
        time.sleep(0.3)
        assert len(receiver.requests) == sent, "sends went on while the store lagged"
        store.catch_up()
        receiver.wait_for(40, timeout=10)
        assert delivery.stop(10)
        assert {r.state for r in (box.load(seq) for seq in range(1, 41)) if r is not None} == {"delivered"}
    finally:
        delivery.stop(1)
        box.close()
