"""The outbox's invariants (module docstring of :mod:`bridge.outbox`), checked by a hypothesis
state machine against the real SQLite store: random enqueues, claims, finishes (including
late and duplicate ones), replays and restarts."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bridge.coalesce import keep
from bridge.outbox import Outbox
from bridge.store import Head

KEYS = ("a", "b", "c")
LEVELS = ("OK", "WARNING", "CRITICAL")
FINAL = ("delivered", "dead", "suppressed", "superseded")
NOW = 1_700_000_000.0


class OutboxMachine(RuleBasedStateMachine):
    """A model of what each row's state must be, compared with the file after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="outbox-sm-")
        self.path = str(Path(self.dir) / "o.db")
        self.box = Outbox(self.path, clock=lambda: NOW).open()
        #: seq -> (key, level, state) as the model expects it.
        self.rows: Dict[int, Tuple[str, str, str]] = {}
        self.claimed: Dict[str, Head] = {}
        self.finished: List[Head] = []
        self.last_delivered: Dict[str, str] = {}
        #: Keys coalesced since anything changed their queue: their (at most two) rows are the plan.
        self.planned: set[str] = set()

    def teardown(self) -> None:
        self.box.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers ---------------------------------------------------------

    def unfinished(self, key: str) -> List[int]:
        return sorted(s for s, (k, _l, st_) in self.rows.items() if k == key and st_ in ("pending", "inflight"))

    def file_rows(self) -> Dict[int, Tuple[str, str, str]]:
        conn = sqlite3.connect(self.path)
        try:
            return {s: (k, lv, st_) for s, k, lv, st_ in conn.execute("SELECT seq, key, level, state FROM outbox")}
        finally:
            conn.close()

    # -- rules -----------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), level=st.sampled_from(LEVELS))
    def enqueue(self, key: str, level: str) -> None:
        seq = self.box.enqueue("t", key, level, f'{{"id":"{key}","level":"{level}"}}'.encode()).result(10)
        assert seq not in self.rows
        self.rows[seq] = (key, level, "pending")
        self.planned.discard(key)

    @rule()
    def claim(self) -> None:
        head, _due = self.box.peek("t", NOW + 1e6)
        if head is None:
            # Nothing claimable: every key with unfinished rows must be busy.
            for key in KEYS:
                if self.unfinished(key):
                    assert key in self.claimed, f"{key} has pending rows but no head"
            return
        assert head.key not in self.claimed, "a second row of a busy key was offered"
        assert head.seq == self.unfinished(head.key)[0], "a row that is not the head was offered"
        assert self.box.claim(head)
        self.claimed[head.key] = head
        key, level, _ = self.rows[head.seq]
        self.rows[head.seq] = (key, level, "inflight")

    @precondition(lambda self: bool(self.claimed))
    @rule(data=st.data(), state=st.sampled_from(("delivered", "dead", "suppressed", "pending")))
    def finish(self, data: st.DataObject, state: str) -> None:
        key = data.draw(st.sampled_from(sorted(self.claimed)))
        head = self.claimed.pop(key)
        self.planned.discard(key)
        if state == "pending":
            self.box.finish(head, "pending", attempts=1, next_at=NOW)
        else:
            self.box.finish(head, state, attempts=1)
            self.finished.append(head)
        _, level, _ = self.rows[head.seq]
        self.rows[head.seq] = (key, level, state)
        if state == "delivered":
            self.last_delivered[key] = level

    @precondition(lambda self: bool(self.finished))
    @rule(data=st.data(), state=st.sampled_from(("delivered", "dead", "pending")))
    def late_finish(self, data: st.DataObject, state: str) -> None:
        """A duplicate finish of a row already finished must change nothing."""
        head = data.draw(st.sampled_from(self.finished))
        if state == "pending":
            self.box.finish(head, "pending", attempts=9, next_at=NOW)
        else:
            self.box.finish(head, state, attempts=9)

    @rule(key=st.one_of(st.none(), st.sampled_from(KEYS)), force=st.booleans())
    def replay(self, key: Optional[str], force: bool) -> None:
        """Dead letters with no later event go back in place; superseded ones stay dead,
        or with ``force`` are queued again after the newer events."""
        result = self.box.replay("t", key, force=force)
        dead = sorted(s for s, (k, _l, st_) in self.rows.items() if st_ == "dead" and (key is None or k == key))
        in_place = [s for s in dead if not any(
            later > s and self.rows[later][0] == self.rows[s][0] and self.rows[later][2] != "dead"
            for later in self.rows
        )]
        superseded = [s for s in dead if s not in in_place]
        assert [r.seq for r in result.requeued] == in_place
        if force:
            assert [f.row.seq for f in result.forced] == superseded and not result.superseded
        else:
            assert [s_.row.seq for s_ in result.superseded] == superseded and not result.forced
        for seq in in_place:
            k, level, _ = self.rows[seq]
            self.rows[seq] = (k, level, "pending")
        for f in result.forced:
            k, level, _ = self.rows[f.row.seq]
            self.rows[f.row.seq] = (k, level, "superseded")
            assert f.new_seq > max(self.rows)
            self.rows[f.new_seq] = (k, level, "pending")
        gone = set(in_place) | {f.row.seq for f in result.forced}
        self.planned -= {self.rows[s_][0] for s_ in gone}
        self.finished = [h for h in self.finished if h.seq not in gone]

    @rule(mode=st.sampled_from(("worst-then-latest", "latest")))
    def coalesce(self, mode: str) -> None:
        """Coalescing supersedes pending rows of idle keys only, keeping what the plan keeps."""
        expected = 0
        for key in KEYS:
            if key in self.claimed or key in self.planned:
                continue  # planned: nothing changed since its last plan, the outbox leaves it alone
            pending = [(s, self.rows[s][1]) for s in self.unfinished(key)]
            if len(pending) > 1:
                self.planned.add(key)
            kept = set(keep(pending, self.last_delivered.get(key), mode))
            for seq, level in pending:
                if seq not in kept:
                    self.rows[seq] = (key, level, "superseded")
                    expected += 1
        assert self.box.coalesce("t", mode, limited=True) == expected

    @rule()
    def restart(self) -> None:
        """A crash or restart puts in-flight rows back to pending (at-least-once)."""
        self.box.close()
        self.box = Outbox(self.path, clock=lambda: NOW).open()
        for seq, (k, level, st_) in list(self.rows.items()):
            if st_ == "inflight":
                self.rows[seq] = (k, level, "pending")
        self.claimed.clear()
        self.planned.clear()

    # -- invariants ------------------------------------------------------------

    @invariant()
    def file_matches_model(self) -> None:
        self.box.check_external(wait=True)
        assert self.file_rows() == self.rows

    @invariant()
    def one_inflight_per_key_and_only_heads(self) -> None:
        for key in KEYS:
            inflight = [s for s, (k, _l, st_) in self.rows.items() if k == key and st_ == "inflight"]
            assert len(inflight) <= 1
            if inflight:
                assert inflight[0] == self.unfinished(key)[0]
                assert self.box._busy.get(("t", key)) == inflight[0]

    @invariant()
    def backlogs_are_known(self) -> None:
        """Every idle key with more than one pending row is a coalescing candidate."""
        candidates = set(self.box.coalescible("t", limited=True))
        for key in KEYS:
            if key not in self.claimed and key not in self.planned and len(self.unfinished(key)) > 1:
                assert key in candidates, f"{key} has a backlog the outbox does not know of"

    @invariant()
    def ledger_matches_deliveries(self) -> None:
        open_keys = {i.key: i.level for i in self.box.incidents("t")}
        expected = {k: lv for k, lv in self.last_delivered.items() if lv != "OK"}
        assert open_keys == expected

    @invariant()
    def counts_match(self) -> None:
        stats = self.box.stats()
        pending = sum(1 for _k, _l, st_ in self.rows.values() if st_ in ("pending", "inflight"))
        dead = sum(1 for _k, _l, st_ in self.rows.values() if st_ == "dead")
        assert stats.pending.get("t", 0) + stats.inflight.get("t", 0) == pending
        assert stats.dead.get("t", 0) == dead


OutboxMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOutboxInvariants = OutboxMachine.TestCase


def test_issue_12_item_4_reproduction(tmp_path: Path) -> None:
    """finish(h1, "pending") after h1 was delivered and h2 claimed does not free the key:
    trigger and resolve can never be in flight together."""
    box = Outbox(str(tmp_path / "o.db"), clock=lambda: NOW).open()
    try:
        box.enqueue("t", "k", "CRITICAL", b"{}").result(5)
        box.enqueue("t", "k", "OK", b"{}").result(5)
        h1, _ = box.peek("t", NOW)
        assert h1 is not None and box.claim(h1)
        box.finish(h1, "delivered", attempts=1)
        h2, _ = box.peek("t", NOW)
        assert h2 is not None and h2.level == "OK" and box.claim(h2)
        box.finish(h1, "pending", attempts=1, next_at=NOW)
        again, _ = box.peek("t", NOW)
        assert again is None
        row = box.load(h1.seq)
        assert row is not None and row.state == "delivered"
        assert box._busy[("t", "k")] == h2.seq
    finally:
        box.close()


@pytest.mark.parametrize("state", FINAL[:3])
def test_double_finish_is_harmless(tmp_path: Path, state: str) -> None:
    """Finishing the same head twice leaves the first outcome and the counts alone."""
    box = Outbox(str(tmp_path / "o.db"), clock=lambda: NOW).open()
    try:
        box.enqueue("t", "k", "CRITICAL", b"{}").result(5)
        head, _ = box.peek("t", NOW)
        assert head is not None and box.claim(head)
        box.finish(head, state, attempts=1)
        box.finish(head, "dead" if state != "dead" else "delivered", attempts=2)
        row = box.load(head.seq)
        assert row is not None and row.state == state and row.attempts == (0 if state == "suppressed" else 1)
        assert box.stats().dead.get("t", 0) == (1 if state == "dead" else 0)
    finally:
        box.close()
