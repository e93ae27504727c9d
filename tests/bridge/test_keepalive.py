"""Keep-alive rounds against the real outbox file: batching, busy keys, an unreachable Alertmanager."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from bridge.config import DeliveryConfig, TargetConfig
from bridge.delivery import Sender
from bridge.keepalive import KeepAlive
from bridge.ledger import record_delivery
from bridge.outbox import Outbox
from bridge.store import open_store
from bridge.targets.base import Options, get_type

from .harness import Receiver, free_port


def seed(path: str, count: int) -> List[str]:
    keys = [f"cpu:host=h{i:04d}" for i in range(count)]
    conn = open_store(path, create=True)
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    for i, key in enumerate(keys):
        body = json.dumps({"id": key, "level": "WARNING", "time": "2026-01-01T00:00:00Z",
                           "data": {"series": [{"name": "cpu", "tags": {"host": key.split("=")[1]}}]}})
        record_delivery(cur, "am", key, "WARNING", body.encode(), i + 1, time.time())
    cur.execute("COMMIT")
    conn.close()
    return keys


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    path = str(tmp_path / "bridge.db")
    seed(path, 1200)
    box = Outbox(path).open()
    try:
        yield box
    finally:
        box.close()


def keepalive(url: str, box: Outbox) -> KeepAlive:
    am = get_type("alertmanager").from_options("am", Options("target.am", {"url": url, "resend_interval": "30s"}))
    config = TargetConfig(name="am", type="alertmanager", target=am, timeout=2.0)
    return KeepAlive({"am": config}, box, Sender(DeliveryConfig()), batch=500)


def test_every_open_alert_in_few_requests(outbox: Outbox) -> None:
    """1200 open incidents: 3 POSTs of at most 500, each alert firing with endsAt 4 intervals ahead."""
    with Receiver(default=200) as rx:
        ka = keepalive(rx.url, outbox)
        result = ka.round("am")
        ka.stop()
        assert (result.alerts, result.requests, result.failed) == (1200, 3, 0)
        posted = [a for r in rx.requests for a in r.json()]
        assert [len(r.json()) for r in rx.requests] == [500, 500, 200]
        assert {a["labels"]["severity"] for a in posted} == {"warning"}
        assert len({a["labels"]["kapacitor_id"] for a in posted}) == 1200
        ends = min(a["endsAt"] for a in posted)
        assert ends > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 100))


def test_busy_keys_are_skipped(outbox: Outbox) -> None:
    """A key with a queued event is not re-posted: its delivery carries the newer state."""
    outbox.enqueue("am", "cpu:host=h0001", "OK", b'{"id":"cpu:host=h0001","level":"OK","time":"2026-01-01T00:01:00Z"}').result(5)
    with Receiver(default=200) as rx:
        ka = keepalive(rx.url, outbox)
        result = ka.round("am")
        ka.stop()
        assert (result.alerts, result.skipped_busy) == (1199, 1)
        assert "cpu:host=h0001" not in {a["labels"]["kapacitor_id"] for r in rx.requests for a in r.json()}


def test_unreachable_alertmanager_abandons_the_round(outbox: Outbox) -> None:
    """Nothing listens: one failed POST, the rest of the round is left for the next one."""
    ka = keepalive(f"http://127.0.0.1:{free_port()}", outbox)
    result = ka.round("am")
    ka.stop()
    assert (result.requests, result.failed, result.abandoned) == (1, 1, 700)
    assert outbox.idle("am", "cpu:host=h0000")  # the hold was released
