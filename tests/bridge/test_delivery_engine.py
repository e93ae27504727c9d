"""The delivery engine hands outcomes to the store without waiting for their commit.

Workers move on at once, but the key stays busy until the outcome is durable: the next
event of the id is never sent before it; a failed commit is handed again (key still
busy) until it sticks; ``stop()`` returns only when every outcome handed is durable."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from bridge.config import load
from bridge.delivery import Delivery
from bridge.errors import StoreError
from bridge.outbox import Outbox
from bridge.store import Outcome

from .conftest import webhook_config
from .harness import Receiver, kapacitor_event


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
