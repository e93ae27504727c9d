"""The status page's snapshot through the store, on SQLite and on a real PostgreSQL: the same
values from either backend (one suite, parametrised like tests/bridge/test_store_contract.py)."""

from __future__ import annotations

import pytest

from bridge import silences
from bridge.backend import Store
from tests.bridge.test_store_contract import Clock, Factory, box, clock, deliver, make_store, put, take  # noqa: F401

TARGETS = {"t": "webhook", "u": "slack"}


def _fill(box: Store, clock: Clock) -> dict[str, int]:
    """One of each: delivered (incident open), retrying, dead, silenced."""
    seqs = {"a": deliver(box, clock, "a", "CRITICAL").seq}
    clock.now += 1
    seqs["b"] = put(box, "b", "CRITICAL")
    head = take(box, clock)
    assert head is not None
    box.finish(head, "pending", attempts=1, next_at=clock() + 60, error="HTTP 503: busy", status=503)
    clock.now += 1
    seqs["c"] = put(box, "c", "WARNING")
    head = take(box, clock)
    assert head is not None
    box.finish(head, "dead", attempts=1, error="HTTP 400: bad payload", status=400)
    box.add_silence(silences.new_silence([silences.parse_matcher("id=~m.*")], 3600, "patching", "ops", now=clock()))
    seqs["m1"] = put(box, "m1", "CRITICAL")
    head = take(box, clock)
    assert head is not None
    box.finish(head, "silenced")
    return seqs


class TestSnapshot:
    def test_the_page_reads_the_store(self, box: Store, clock: Clock, request: pytest.FixtureRequest) -> None:
        """Targets' health and counts, queue, dead letter with its error, incident, deliveries, silences, store."""
        seqs = _fill(box, clock)
        snap = box.status(TARGETS, listen="127.0.0.1:9095")
        t, u = snap.targets
        assert (t.name, t.pending, t.inflight, t.dead, t.silenced, t.open_incidents) == ("t", 1, 0, 1, 1, 1)
        assert t.health == "failing" and t.retrying_since is not None
        assert (t.last_error, t.last_error_key) == ("HTTP 400: bad payload", "c")
        assert t.last_success_at == 1_700_000_000.0
        assert (u.name, u.type, u.health, u.pending, u.dead) == ("u", "slack", "idle", 0, 0)
        assert [(q.key, q.state) for q in snap.queued] == [("b", "pending"), ("m1", "silenced")]
        assert [(d.seq, d.key, d.last_status, d.last_error) for d in snap.dead] == [
            (seqs["c"], "c", 400, "HTTP 400: bad payload")]
        assert [(d.key, d.state) for d in snap.deliveries] == [("a", "delivered")]
        assert [(i.target, i.key, i.level) for i in snap.incidents] == [("t", "a", "CRITICAL")]
        assert [(s.matchers, s.comment, s.held) for s in snap.silences] == [("id=~m.*", "patching", 1)]
        assert snap.store.listen == "127.0.0.1:9095" and snap.store.schema_version == 3
        backend = request.node.callspec.params["make_store"]
        assert snap.store.backend == backend
        if backend == "sqlite":
            assert snap.cluster is None
        else:
            assert snap.cluster is not None and snap.cluster.replica_id == "r1"
            assert "password" not in snap.store.path and "database" in snap.store.path
            (me,) = snap.cluster.replicas
            assert me.id == "r1" and "silences" in me.jobs and set(me.jobs) == set(snap.cluster.jobs)

    def test_deliveries_are_bounded_and_newest_first(self, box: Store, clock: Clock) -> None:
        """At most 100, by the time they finished."""
        for n in range(105):
            clock.now += 1
            deliver(box, clock, f"k{n}", "WARNING")
        snap = box.status(TARGETS, listen="x")
        assert len(snap.deliveries) == 100
        assert [d.key for d in snap.deliveries[:2]] == ["k104", "k103"]

    def test_drop_dead(self, box: Store, clock: Clock) -> None:
        """Only a dead letter can be dropped, once; the page no longer shows it."""
        seqs = _fill(box, clock)
        assert not box.drop_dead(seqs["b"])
        assert box.drop_dead(seqs["c"])
        assert not box.drop_dead(seqs["c"])
        assert box.load(seqs["c"]) is None
        assert box.status(TARGETS, listen="x").dead == ()
