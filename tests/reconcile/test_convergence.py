"""Property: whatever happens in between, the platform ends in Kapacitor's latest state per id.

Random interleavings of state changes, bridge crashes (the bridge is down: Kapacitor's
POSTs are refused and lost, as Kapacitor never retries), platform outages (5xx:
retried; 4xx: dead-lettered) and ``replay`` of dead letters. At the end the platform is
healthy, one reconcile round runs against Kapacitor's state, and the queue drains:
every id is open on the platform exactly when Kapacitor holds it non-OK.

The bridge runs in this process (real outbox file, delivery threads, HTTP to a real
loopback receiver); a crash is a stop without draining followed by a fresh open of the
same file. Kapacitor's state is the model's, handed to reconcile as the data its API
would return.
"""

from __future__ import annotations

import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import from_mapping
from bridge.delivery import Delivery
from bridge.kapacitor_api import KapacitorEvent, KapacitorState
from bridge.outbox import Outbox
from bridge.reconcile import Reconciler, routes_of
from tests.bridge.harness import Receiver, Reply, kapacitor_event, wait_until

IDS = ("cpu:host=a", "cpu:host=b", "cpu:host=c")
LEVELS = ("OK", "INFO", "WARNING", "CRITICAL")

Step = Tuple[Any, ...]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.sampled_from(IDS), st.sampled_from(LEVELS)),
        st.tuples(st.just("crash")),
        st.tuples(st.just("outage"), st.sampled_from((503, 400))),
        st.tuples(st.just("heal")),
        st.tuples(st.just("replay")),
        st.tuples(st.just("down")),
        st.tuples(st.just("up")),
    ),
    min_size=1,
    max_size=25,
)


class FixedKapacitor:
    """What ``GET /kapacitor/v1/alerts/topics/.../events`` returns for the model's state."""

    def __init__(self, levels: Dict[str, str]) -> None:
        self.levels = levels

    def read(self) -> KapacitorState:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        events = {k: KapacitorEvent(k, v, f"{k} is {v}", "", now, 0, ("main:cpu:alert2",)) for k, v in self.levels.items()}
        return KapacitorState(events, ("main:cpu:alert2",), time.time())

    def close(self) -> None:
        pass


class Bridge:
    """Outbox + delivery on one file; ``crash`` drops both without draining, ``start`` reopens."""

    def __init__(self, path: str, url: str) -> None:
        self.config = from_mapping({
            "store": {"path": path},
            "delivery": {"backoff_initial": "10ms", "backoff_max": "50ms", "repeat_interval": "0s"},
            "target": [{"name": "hook", "type": "webhook", "url": url}],
            "kapacitor": {"url": "http://127.0.0.1:9", "default_target": "hook"},
        })
        self.outbox: Optional[Outbox] = None
        self.delivery: Optional[Delivery] = None

    @property
    def up(self) -> bool:
        return self.outbox is not None

    def start(self) -> None:
        self.outbox = Outbox(self.config.store.path, on_change=lambda: self.delivery.wake() if self.delivery else None)
        self.outbox.open()
        self.delivery = Delivery(self.config, self.outbox)
        self.delivery.start()

    def crash(self) -> None:
        if self.delivery is not None and self.outbox is not None:
            self.delivery.stop(timeout=0.0)
            self.outbox.close()
        self.outbox, self.delivery = None, None

    def post(self, ident: str, level: str, previous: str) -> None:
        assert self.outbox is not None
        body = json.dumps(kapacitor_event(ident, level, previous_level=previous)).encode()
        self.outbox.enqueue("hook", ident, level, body).result(10)

    def drained(self) -> bool:
        assert self.outbox is not None
        return self.outbox.stats().total_pending == 0


def platform_state(receiver: Receiver) -> Dict[str, str]:
    """Last level the platform accepted per id."""
    state: Dict[str, str] = {}
    for r in receiver.requests:
        if 200 <= r.status < 300:
            body = r.json()
            state[body["id"]] = body["level"]
    return state


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps)
def test_platform_converges_to_kapacitor(plan: List[Step]) -> None:
    """Final platform state == Kapacitor's latest state, for every id, after one reconcile."""
    receiver = Receiver(default=200)
    bridge = Bridge(str(Path(tempfile.mkdtemp(prefix="converge-")) / "bridge.db"), receiver.url + "/hook")
    kapacitor: Dict[str, str] = {}
    try:
        bridge.start()
        for step in plan:
            kind = step[0]
            if kind == "event":
                _, ident, level = step
                previous = kapacitor.get(ident, "OK")
                if level == previous:
                    continue  # Kapacitor posts state changes (stateChangesOnly)
                kapacitor[ident] = level
                if bridge.up:
                    bridge.post(ident, level, previous)
            elif kind == "crash" and bridge.up:
                bridge.crash()
                bridge.start()
            elif kind == "down" and bridge.up:
                bridge.crash()
            elif kind == "up" and not bridge.up:
                bridge.start()
            elif kind == "outage":
                receiver.set_default(Reply(step[1]))
            elif kind == "heal":
                receiver.set_default(200)
            elif kind == "replay" and bridge.outbox is not None:
                bridge.outbox.replay("hook")
            time.sleep(0.01)
        receiver.set_default(200)
        if not bridge.up:
            bridge.start()
        assert bridge.outbox is not None
        wait_until(bridge.drained, timeout=20, message="queue never drained")
        reconciler = Reconciler(bridge.config.kapacitor, bridge.outbox, routes=routes_of(bridge.config.kapacitor),
                                targets=["hook"], client=FixedKapacitor(kapacitor))  # type: ignore[arg-type]
        assert reconciler.run_once() is not None
        bridge.delivery.wake()  # type: ignore[union-attr]
        wait_until(bridge.drained, timeout=20, message="reconcile's rows never drained")
        seen = platform_state(receiver)
        for ident in IDS:
            want = kapacitor.get(ident, "OK")
            got = seen.get(ident, "OK")
            assert (got != "OK") == (want != "OK"), (ident, want, got, plan)
            if want != "OK":
                assert got == want, (ident, want, got, plan)
    finally:
        bridge.crash()
        receiver.stop()
