"""Outage coalescing: the plan (pure) and the outbox applying it (real SQLite store)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.coalesce import BACKLOG_AGE, MODES, SEVERITY, keep
from bridge.outbox import Outbox

NOW = 1_700_000_000.0
LEVELS = ("OK", "INFO", "WARNING", "CRITICAL")


class TestPlan:
    @pytest.mark.parametrize(
        "levels,told,mode,kept",
        [
            (["CRITICAL"], None, "worst-then-latest", [1]),
            (["CRITICAL", "OK", "CRITICAL", "OK"], None, "worst-then-latest", [3, 4]),
            (["CRITICAL", "OK", "CRITICAL", "OK"], "CRITICAL", "worst-then-latest", [4]),
            (["WARNING", "CRITICAL", "WARNING", "CRITICAL"], None, "worst-then-latest", [4]),
            (["OK", "OK", "CRITICAL"], "CRITICAL", "worst-then-latest", [2, 3]),
            (["OK", "OK", "CRITICAL"], None, "worst-then-latest", [3]),
            (["CRITICAL", "WARNING", "OK"], None, "latest", [3]),
            (["CRITICAL", "WARNING", "OK"], None, "off", [1, 2, 3]),
        ],
    )
    def test_examples(self, levels: List[str], told: Optional[str], mode: str, kept: List[int]) -> None:
        """Worst skipped level only if the platform was not told it and it is not the latest."""
        rows = [(i + 1, level) for i, level in enumerate(levels)]
        assert keep(rows, told, mode) == kept

    @given(
        st.lists(st.sampled_from(LEVELS), min_size=1, max_size=30),
        st.one_of(st.none(), st.sampled_from(LEVELS)),
        st.sampled_from(MODES[:2]),
    )
    def test_properties(self, levels: List[str], told: Optional[str], mode: str) -> None:
        """At most two rows, ascending, always the latest; in worst-then-latest mode the platform
        sees the peak of the skipped ones unless it already knew that level."""
        rows = [(i * 3 + 7, level) for i, level in enumerate(levels)]
        kept = keep(rows, told, mode)
        assert 1 <= len(kept) <= 2 and kept == sorted(kept) and kept[-1] == rows[-1][0]
        if mode == "worst-then-latest" and len(rows) > 1:
            worst = max(levels[:-1], key=SEVERITY.__getitem__)
            seen = {dict(rows)[s] for s in kept} | {told or "OK"}
            assert worst in seen

    def test_unknown_mode(self) -> None:
        """A mode outside the three is refused by name."""
        with pytest.raises(ValueError, match="unknown coalesce mode"):
            keep([(1, "OK")], None, "newest")


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    outbox = Outbox(str(tmp_path / "o.db"), clock=lambda: NOW).open()
    yield outbox
    outbox.close()


LATER = NOW + BACKLOG_AGE


def put(box: Outbox, key: str, level: str, target: str = "t") -> int:
    return box.enqueue(target, key, level, f'{{"id":"{key}","level":"{level}"}}'.encode()).result(5)


def states(box: Outbox, seqs: List[int]) -> List[str]:
    out = []
    for seq in seqs:
        row = box.load(seq)
        assert row is not None
        out.append(row.state)
    return out


class TestOutboxCoalesce:
    def test_flips_become_worst_then_latest(self, box: Outbox) -> None:
        """Twenty flips of one id become two deliveries; the rest stay on file as superseded."""
        seqs = [put(box, "a", ("CRITICAL", "WARNING", "OK")[i % 3]) for i in range(20)]
        assert box.coalescible("t") == [], "a fresh burst to a healthy platform is not a backlog"
        assert box.coalescible("t", LATER) == ["a"]
        assert box.coalesce("t", "worst-then-latest", limited=True) == 18
        assert box.coalescible("t", LATER) == []
        head, _ = box.peek("t", NOW)
        assert head is not None and head.level == "CRITICAL" and head.seq == seqs[18]
        kept = [s for s, st_ in zip(seqs, states(box, seqs)) if st_ == "pending"]
        assert kept == [seqs[18], seqs[19]]
        assert box.stats().pending == {"t": 2}

    def test_told_level_is_not_repeated(self, box: Outbox) -> None:
        """If the platform was last told CRITICAL, a backlog ending in OK sends only the OK."""
        put(box, "a", "CRITICAL")
        head, _ = box.peek("t", NOW)
        assert head is not None and box.claim(head)
        box.finish(head, "delivered", attempts=1)
        for level in ("OK", "CRITICAL", "OK"):
            put(box, "a", level)
        assert box.coalesce("t", "worst-then-latest", limited=True) == 2
        head, _ = box.peek("t", NOW)
        assert head is not None and head.level == "OK"

    def test_busy_key_waits(self, box: Outbox) -> None:
        """A key with a row in flight is not coalesced until that row is finished."""
        put(box, "a", "CRITICAL")
        head, _ = box.peek("t", NOW)
        assert head is not None and box.claim(head)
        for level in ("OK", "WARNING", "OK"):
            put(box, "a", level)
        assert box.coalescible("t", limited=True) == [] and box.coalesce("t", "latest", limited=True) == 0
        box.finish(head, "pending", attempts=1, next_at=NOW + 30)
        assert box.coalescible("t") == ["a"], "a head that failed once makes a backlog"
        assert box.coalesce("t", "latest") == 3
        nxt, due = box.peek("t", NOW)
        assert nxt is None and due == NOW + 30, "the retry schedule is inherited, not reset"
        nxt, _ = box.peek("t", NOW + 30)
        assert nxt is not None and nxt.level == "OK"
        row = box.load(nxt.seq)
        assert row is not None and row.attempts == 1

    def test_restart_finds_backlog(self, tmp_path: Path) -> None:
        """After a restart the keys with a backlog are known again (the outage-then-restart case)."""
        path = str(tmp_path / "r.db")
        box = Outbox(path, clock=lambda: NOW).open()
        for level in ("CRITICAL", "OK", "CRITICAL"):
            put(box, "a", level)
        put(box, "b", "OK")
        box.close()
        box = Outbox(path, clock=lambda: NOW).open()
        try:
            assert box.coalescible("t", limited=True) == ["a"]
            assert box.coalesce("t", "latest", limited=True) == 2
        finally:
            box.close()

    def test_resolves_first(self, box: Outbox) -> None:
        """Under a rate limit a ready resolve is offered before earlier triggers of other ids."""
        for key in ("x1", "x2", "x3"):
            put(box, key, "CRITICAL")
        put(box, "y", "OK")
        head, _ = box.peek("t", NOW)
        assert head is not None and head.key == "x1"
        head, _ = box.peek("t", NOW, resolves_first=True)
        assert head is not None and head.key == "y"
        assert box.claim(head)
        head, _ = box.peek("t", NOW, resolves_first=True)
        assert head is not None and head.key == "x1"

    def test_resolve_behind_trigger_keeps_order(self, box: Outbox) -> None:
        """An OK queued behind its own id's trigger is not a head: per-id order holds."""
        put(box, "x", "CRITICAL")
        put(box, "x", "OK")
        put(box, "y", "CRITICAL")
        order: List[Tuple[str, str]] = []
        while True:
            head, _ = box.peek("t", NOW, resolves_first=True)
            if head is None:
                break
            assert box.claim(head)
            order.append((head.key, head.level))
            box.finish(head, "delivered", attempts=1)
        assert order.index(("x", "CRITICAL")) < order.index(("x", "OK"))


def test_rate_limited_target_sends_resolves_first(tmp_path: Path) -> None:
    """Under a rate limit a queued resolve of one id goes before earlier triggers of others."""
    from bridge.config import load
    from bridge.delivery import Delivery

    from .conftest import webhook_config
    from .harness import Receiver

    receiver = Receiver()
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        webhook_config(receiver.url + "/hook", target_extra='rate_limit = "2/1h"', repeat_interval="0s")
        + f'\n[store]\npath = "{tmp_path / "d.db"}"\n'
    )
    config = load(str(cfg))
    box = Outbox(config.store.path).open()
    delivery = Delivery(config, box)
    try:
        for key in ("x1", "x2", "x3"):
            body = f'{{"id":"{key}","level":"CRITICAL","time":"2026-01-01T00:00:00Z"}}'.encode()
            box.enqueue("hook", key, "CRITICAL", body).result(5)
        box.enqueue("hook", "y", "OK", b'{"id":"y","level":"OK","time":"2026-01-01T00:00:00Z"}').result(5)
        delivery.start()
        receiver.wait_for(2)
        time.sleep(0.5)
        # The two tokens went to the resolve queued last and the oldest trigger, not x2.
        assert sorted(r.json()["id"] for r in receiver.requests) == ["x1", "y"]
    finally:
        delivery.stop(5)
        box.close()
        receiver.stop()
