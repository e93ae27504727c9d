"""Delivery through a real bridge subprocess to real local receivers: order, retries,
Retry-After, dead letters and replay, crash recovery, suppression, auto-resolve, limits."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Callable, Dict, List

from bridge.delivery import RetryPolicy, synthetic_resolve

from .conftest import webhook_config
from .harness import BridgeProcess, Receiver, Recorded, Reply, kapacitor_event

MakeBridge = Callable[..., BridgeProcess]


def levels_by_id(requests: List[Recorded]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = defaultdict(list)
    for r in requests:
        body = r.json()
        out[body["id"]].append(body["level"])
    return out


def collapse(levels: List[str]) -> List[str]:
    """Drop consecutive duplicates (at-least-once may repeat an event, never reorder it)."""
    out: List[str] = []
    for level in levels:
        if not out or out[-1] != level:
            out.append(level)
    return out


class TestOrder:
    def test_trigger_then_resolve_in_order(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """For every id the resolve arrives after its trigger, while ids interleave freely."""
        bridge = make_bridge(webhook_config(receiver.url + "/hook"))
        # Slow, flaky receiver so the two events of an id are queued together.
        receiver.script(*([Reply(503)] * 5))
        ids = [f"disk:host=h{i}" for i in range(20)]
        for alert_id in ids:
            assert bridge.post_alert("hook", kapacitor_event(alert_id, "CRITICAL"))[0] == 202
        for alert_id in ids:
            assert bridge.post_alert("hook", kapacitor_event(alert_id, "OK", previous_level="CRITICAL"))[0] == 202
        receiver.wait_for(40, only_accepted=True)
        got = levels_by_id(receiver.accepted())
        assert set(got) == set(ids)
        for alert_id in ids:
            assert got[alert_id] == ["CRITICAL", "OK"], alert_id

    def test_body_forwarded_unchanged(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """The webhook target posts Kapacitor's JSON as it came in."""
        bridge = make_bridge(webhook_config(receiver.url + "/hook"))
        event = kapacitor_event("cpu:host=a", "WARNING", details="<b>x</b>", extra_field=[1, 2])
        bridge.post_alert("hook", event)
        (request,) = receiver.wait_for(1)
        assert request.json() == event
        assert request.path == "/hook"
        assert request.header("Content-Type") == "application/json"


class TestRetries:
    def test_500_500_202(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """Server errors are retried with backoff until the platform accepts."""
        receiver.script(500, 500, 202)
        bridge = make_bridge(webhook_config(receiver.url + "/hook"))
        bridge.post_alert("hook", kapacitor_event())
        requests = receiver.wait_for(3)
        assert [r.status for r in requests] == [500, 500, 202]
        bridge.wait_until(
            lambda: bridge.metric("oncall_deliveries_total", {"target": "hook", "outcome": "delivered"}) == 1
        )
        assert bridge.metric("oncall_deliveries_total", {"target": "hook", "outcome": "retry"}) == 2
        retries = bridge.events("delivery.retry")
        assert [e["attempt"] for e in retries] == [1, 2]
        assert all(e["status"] == 500 and e["target"] == "hook" and "next_in" in e for e in retries)
        assert bridge.events("delivery.ok")[0]["attempt"] == 3

    def test_retry_after_honoured(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """429 with Retry-After: 1 waits about a second, not the (50 ms) backoff."""
        receiver.script(Reply(429, "slow down", {"Retry-After": "1"}), 202)
        bridge = make_bridge(webhook_config(receiver.url + "/hook"))
        bridge.post_alert("hook", kapacitor_event())
        first, second = receiver.wait_for(2, timeout=10)
        assert second.at - first.at >= 0.9
        assert bridge.events("delivery.retry")[0]["retry_after"] == 1.0

    def test_timeout_is_retried(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """A platform that hangs past the timeout is retried, not waited for forever."""
        receiver.script(Reply(202, delay=1.5), 202)
        bridge = make_bridge(webhook_config(receiver.url + "/hook", timeout="500ms"))
        bridge.post_alert("hook", kapacitor_event())
        bridge.wait_until(lambda: bridge.events("delivery.ok"), timeout=10)
        assert "timeout" in bridge.events("delivery.retry")[0]["error"]

    def test_connection_refused_is_retried(self, make_bridge: MakeBridge) -> None:
        """A platform that is down is retried until it comes back."""
        down = Receiver()
        port = down.port
        down.stop()
        bridge = make_bridge(webhook_config(f"http://127.0.0.1:{port}/hook"))
        bridge.post_alert("hook", kapacitor_event())
        bridge.wait_until(lambda: len(bridge.events("delivery.retry")) >= 2)
        assert "connection failed" in bridge.events("delivery.retry")[0]["error"]
        up = Receiver(port=port)
        try:
            up.wait_for(1, timeout=10)
        finally:
            up.stop()

    def test_max_age_dead_letters(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """A delivery still failing after max_age goes to the dead letters, not away."""
        receiver.set_default(503)
        bridge = make_bridge(webhook_config(receiver.url + "/hook", max_age="600ms"))
        bridge.post_alert("hook", kapacitor_event())
        bridge.wait_until(lambda: bridge.events("delivery.dead"), timeout=10)
        dead = bridge.events("delivery.dead")[0]
        assert "max_age" in dead["error"] and dead["status"] == 503
        assert bridge.metric("oncall_outbox_dead", {"target": "hook"}) == 1


class TestDeadLetters:
    def test_400_dead_then_replay(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """A 4xx is permanent: dead at once with status and body; replay re-sends it."""
        receiver.script(Reply(400, '{"error":"summary too long"}'))
        bridge = make_bridge(webhook_config(receiver.url + "/hook"))
        bridge.post_alert("hook", kapacitor_event("cpu:host=a", "CRITICAL"))
        bridge.wait_until(lambda: bridge.events("delivery.dead"))
        dead = bridge.events("delivery.dead")[0]
        assert dead["status"] == 400 and "summary too long" in dead["body"] and dead["resolve"] is False
        assert len(receiver.requests) == 1  # not retried

        listing = bridge.cli("queue", "--dead", "--json")
        assert listing.returncode == 0, listing.stderr
        (row,) = json.loads(listing.stdout)
        assert row["id"] == "cpu:host=a" and row["last_status"] == 400 and "summary too long" in row["last_error"]

        replayed = bridge.cli("replay", "--target", "hook")
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout
        receiver.wait_for(2)
        assert receiver.requests[1].status == 202
        bridge.wait_until(lambda: bridge.metric("oncall_outbox_dead", {"target": "hook"}) == 0)
        assert json.loads(bridge.cli("queue", "--dead", "--json").stdout) == []

    def test_dead_trigger_does_not_block_resolve(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """The queue of an id moves on after a dead letter."""
        receiver.script(400)
        bridge = make_bridge(webhook_config(receiver.url + "/hook"))
        bridge.post_alert("hook", kapacitor_event("a", "CRITICAL"))
        bridge.post_alert("hook", kapacitor_event("a", "OK"))
        receiver.wait_for(2)
        assert [r.json()["level"] for r in receiver.requests] == ["CRITICAL", "OK"]


class TestCrashRecovery:
    def test_kill9_with_100_undelivered(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """kill -9 with 100 accepted but undelivered alerts: after restart all arrive, per id in order."""
        receiver.set_default(503)
        bridge = make_bridge(webhook_config(receiver.url + "/hook", backoff_max="300ms"))
        expected: Dict[str, List[str]] = {}
        for i in range(50):
            alert_id = f"mem:host=h{i}"
            for level in ("CRITICAL", "OK"):
                status, body = bridge.post_alert("hook", kapacitor_event(alert_id, level))
                assert status == 202, body
            expected[alert_id] = ["CRITICAL", "OK"]
        receiver.wait_for(10, timeout=20)  # deliveries are being attempted and failing
        bridge.kill9()
        assert not receiver.accepted()
        receiver.set_default(202)
        bridge.start()
        receiver.wait_for(100, only_accepted=True, timeout=30)
        got = levels_by_id(receiver.accepted())
        collapsed = {k: collapse(v) for k, v in got.items()}
        wrong = {k: got.get(k) for k in expected if collapsed.get(k) != expected[k]}
        assert not wrong, f"ids delivered out of order or missing: {wrong}"
        # The receiver records a request before answering it: wait for the last commit.
        bridge.wait_until(lambda: bridge.metric("oncall_outbox_pending", {"target": "hook"}) == 0, timeout=20)

    def test_sigterm_finishes_inflight_and_keeps_queue(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """SIGTERM: the attempt in flight completes, the rest stays queued, exit code 0."""
        receiver.script(Reply(202, delay=1.0))
        receiver.set_default(202)
        bridge = make_bridge(webhook_config(receiver.url + "/hook", timeout="5s"))
        bridge.post_alert("hook", kapacitor_event("a", "CRITICAL"))
        bridge.post_alert("hook", kapacitor_event("a", "OK"))
        bridge.wait_until(lambda: bridge.events("alert.accepted") and len(bridge.events("alert.accepted")) == 2)
        # wait until the slow attempt is in flight, then stop
        bridge.wait_until(lambda: bridge.healthz()[1]["queue"]["inflight"] == 1)
        assert bridge.stop() == 0
        assert [r.json()["level"] for r in receiver.requests] == ["CRITICAL"]
        assert bridge.events("delivery.ok")
        stopped = bridge.events("bridge.stopped")[0]
        assert stopped["clean"] is True and stopped["left_pending"] == 1
        bridge.start()
        receiver.wait_for(2)
        assert [r.json()["level"] for r in receiver.requests] == ["CRITICAL", "OK"]


class TestSuppression:
    def test_repeats_suppressed_level_changes_go(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """Same id at the same level within repeat_interval is suppressed; changes always go."""
        bridge = make_bridge(webhook_config(receiver.url + "/hook", repeat_interval="1h"))
        sequence = ["CRITICAL", "CRITICAL", "CRITICAL", "WARNING", "WARNING", "CRITICAL", "OK", "OK"]
        for level in sequence:
            assert bridge.post_alert("hook", kapacitor_event("cpu:host=a", level))[0] == 202
        bridge.wait_until(
            lambda: (bridge.metric("oncall_deliveries_total", {"target": "hook", "outcome": "suppressed"}) or 0) == 4
        )
        assert [r.json()["level"] for r in receiver.requests] == ["CRITICAL", "WARNING", "CRITICAL", "OK"]
        bridge.wait_until(
            lambda: bridge.metric("oncall_deliveries_total", {"target": "hook", "outcome": "delivered"}) == 4
        )

    def test_zero_interval_forwards_all(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """repeat_interval = 0 turns suppression off."""
        bridge = make_bridge(webhook_config(receiver.url + "/hook", repeat_interval="0s"))
        for _ in range(3):
            bridge.post_alert("hook", kapacitor_event("cpu:host=a", "CRITICAL"))
        receiver.wait_for(3)


class TestAutoResolve:
    def test_resolve_after(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """An id that goes quiet on a resolve_after target is resolved by the bridge."""
        bridge = make_bridge(webhook_config(receiver.url + "/hook", target_extra='resolve_after = "700ms"'))
        bridge.post_alert("hook", kapacitor_event("cpu:host=a", "CRITICAL", tags={"host": "a"}))
        bridge.post_alert("hook", kapacitor_event("cpu:host=b", "CRITICAL"))
        bridge.post_alert("hook", kapacitor_event("cpu:host=b", "OK"))  # b recovered on its own
        requests = receiver.wait_for(4, timeout=10)
        synthetic = requests[3].json()
        assert synthetic["id"] == "cpu:host=a" and synthetic["level"] == "OK"
        assert synthetic["previousLevel"] == "CRITICAL"
        assert synthetic["data"]["series"][0]["tags"] == {"host": "a"}
        assert "auto-resolved" in synthetic["message"]
        assert bridge.metric("oncall_auto_resolves_total", {"target": "hook"}) == 1
        assert len(receiver.requests) == 4

    def test_no_recovery_alert_resolved(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """recoverable=false events are resolved after no_recovery_resolve_after."""
        bridge = make_bridge(webhook_config(receiver.url + "/hook", no_recovery_resolve_after="500ms"))
        bridge.post_alert("hook", kapacitor_event("batch:job=x", "CRITICAL", recoverable=False))
        first, second = receiver.wait_for(2, timeout=10)
        assert second.json()["level"] == "OK" and second.at - first.at >= 0.4


class TestRateLimit:
    def test_burst_queued_under_limit(self, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """A burst above the limit is queued, never dropped, and stays under the rate."""
        bridge = make_bridge(webhook_config(receiver.url + "/hook", target_extra='rate_limit = "5/1s"'))
        for i in range(12):
            assert bridge.post_alert("hook", kapacitor_event(f"k{i}", "CRITICAL"))[0] == 202
        requests = receiver.wait_for(12, timeout=15)
        times = [r.at for r in requests]
        # Arrival times carry scheduling jitter on a busy machine; a plain full token bucket
        # would let 10 through in the first second, so 0.9 s windows still tell them apart.
        for i, start in enumerate(times):
            assert len([t for t in times[i:] if t < start + 0.9]) <= 5
        assert sorted(r.json()["id"] for r in requests) == sorted(f"k{i}" for i in range(12))


class TestPolicyUnits:
    def test_backoff_grows_and_caps(self) -> None:
        """tenacity's exponential jitter: initial * 2^(n-1) plus up to ``initial`` jitter, capped."""
        policy = RetryPolicy(1.0, 10.0)
        for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0)]:
            delay = policy.delay(attempt)
            assert base <= delay <= base + 1.0
        assert policy.delay(20) == 10.0
        assert policy.delay(3, retry_after=42.0) == 42.0

    def test_synthetic_resolve_keeps_identity(self) -> None:
        """The bridge's own OK repeats id and series so platforms correlate it."""
        body = json.dumps(kapacitor_event("cpu:host=a", "WARNING", time="2026-01-01T00:00:00Z")).encode()
        resolved = json.loads(synthetic_resolve("t", "cpu:host=a", body, 1767225660.0) or b"")
        assert resolved["level"] == "OK" and resolved["previousLevel"] == "WARNING"
        assert resolved["duration"] == 60 * 10**9
        assert resolved["data"]["series"][0]["name"] == "cpu"
