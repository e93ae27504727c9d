"""Platform outage: the queue grows on disk (not in memory), the bridge says so, and drains.

Time is compressed: backoffs of tens of milliseconds make a few seconds of outage
cost as many failed attempts per alert as hours would at the real defaults, and
``max_age`` of a few seconds stands in for 24 hours.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, List

import psutil

from tests.bridge.conftest import make_bridge  # noqa: F401 - the fixture, reused
from tests.bridge.harness import BridgeProcess, Receiver, kapacitor_event

from .soak import post_many

#: Bytes of padding per alert, so that holding the queue in memory would show in RSS.
PAD = 10240


def outage_config(url: str, **delivery: str) -> str:
    settings = {
        "timeout": "1s",
        "backoff_initial": "50ms",
        "backoff_max": "250ms",
        "repeat_interval": "0s",
        "max_age": "1h",
        # These tests check that every event (history) is delivered in order.
        "coalesce": "off",
        **delivery,
    }
    lines = "\n".join(f'{k} = "{v}"' for k, v in settings.items())
    return f"""
[store]
keep_delivered = 1000000

[delivery]
{lines}

[[target]]
name = "oncall"
type = "webhook"
url = "{url}/hook"
"""


def _bodies(start: int, count: int, ids: int) -> List[bytes]:
    out = []
    for n in range(start, start + count):
        level = ("CRITICAL", "WARNING", "OK")[n % 3]
        event = kapacitor_event(f"disk:host=h{n % ids:03d}", level, details=f"n={n} " + "x" * PAD)
        out.append(json.dumps(event).encode())
    return out


def _store_bytes(bridge: BridgeProcess) -> int:
    db = bridge.db_path
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def _rss(bridge: BridgeProcess) -> int:
    assert bridge.proc is not None
    return int(psutil.Process(bridge.proc.pid).memory_info().rss)


class TestOutage:
    """The receiver is down for a (compressed) long time, then comes back."""

    def test_queue_grows_on_disk_memory_flat_and_drains(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """Thousands of undeliverable alerts: RSS flat, healthz/metrics truthful, all delivered after."""
        platform = Receiver(default=200)
        platform.stop()  # the platform is down before the first alert
        bridge = make_bridge(outage_config(platform.url))
        try:
            ids, wave = 200, 600
            first_post = time.time()
            assert set(post_many(bridge.port, "oncall", _bodies(0, wave, ids))) == {202}
            time.sleep(1.0)  # let the warm-up retries run, then take the baseline
            rss_base, disk_base = _rss(bridge), _store_bytes(bridge)
            posted = wave
            for k in range(1, 4):
                assert set(post_many(bridge.port, "oncall", _bodies(posted, wave, ids))) == {202}
                posted += wave
                time.sleep(0.5)
            rss_after, disk_after = _rss(bridge), _store_bytes(bridge)
            print(f"RSS {rss_base / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB, store {disk_base / 2**20:.1f} -> {disk_after / 2**20:.1f} MiB")
            # The queue grew on disk by about its size...
            assert disk_after - disk_base >= 0.8 * 3 * wave * PAD, (disk_base, disk_after)
            # ...and not in memory (holding it would cost >= 18 MB).
            assert rss_after - rss_base < 8 * 2**20, f"RSS grew {(rss_after - rss_base) / 2**20:.1f} MiB"

            # /healthz and /metrics tell the truth during the outage.
            status, health = bridge.healthz()
            age = time.time() - first_post
            assert status == 200 and health["status"] == "ok", health
            queue = health["queue"]
            assert queue["pending"] + queue["inflight"] == posted, health
            assert queue["dead"] == 0
            assert age - 2.0 <= queue["oldest_pending_age_seconds"] <= age + 0.5, (age, health)
            assert health["targets"]["oncall"]["pending"] + health["targets"]["oncall"]["inflight"] == posted
            assert bridge.metric("oncall_outbox_pending", {"target": "oncall"}) == posted
            oldest = bridge.metric("oncall_outbox_oldest_age_seconds")
            assert oldest is not None and age - 2.0 <= oldest <= age + 0.5, (age, oldest)
            retries = bridge.metric("oncall_deliveries_total", {"target": "oncall", "outcome": "retry"})
            assert retries is not None and retries >= ids, retries  # it kept trying
            assert bridge.metric("oncall_deliveries_total", {"target": "oncall", "outcome": "delivered"}) in (None, 0.0)

            # The platform returns: everything drains, per-id order intact.
            platform.up()
            bridge.wait_until(
                lambda: bridge.metric("oncall_outbox_pending", {"target": "oncall"}) == 0, timeout=90, message="drain"
            )
            got: Dict[str, List[int]] = {}
            for rec in platform.accepted():
                event = rec.json()
                got.setdefault(event["id"], []).append(int(event["details"].split()[0][2:]))
            assert sum(len(v) for v in got.values()) >= posted
            assert {n for ns in got.values() for n in ns} == set(range(posted))
            for ident, ns in got.items():
                assert ns == sorted(ns), f"{ident} delivered out of order: {ns[:20]}"
            status, health = bridge.healthz()
            assert health["queue"]["pending"] == 0 and health["queue"]["oldest_pending_age_seconds"] is None
            assert bridge.metric("oncall_outbox_oldest_age_seconds") == 0.0
        finally:
            platform.stop()

    def test_old_deliveries_become_visible_dead_letters(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """Past max_age a delivery is a dead letter in queue --dead, healthz and metrics; replay sends it."""
        platform = Receiver(default=200)
        platform.stop()
        bridge = make_bridge(outage_config(platform.url, max_age="2s"))
        try:
            bodies = _bodies(0, 30, 10)
            assert set(post_many(bridge.port, "oncall", bodies)) == {202}
            bridge.wait_until(
                lambda: bridge.metric("oncall_outbox_dead", {"target": "oncall"}) == 30, timeout=20, message="dead"
            )
            assert bridge.metric("oncall_outbox_pending", {"target": "oncall"}) == 0
            _status, health = bridge.healthz()
            assert health["queue"]["dead"] == 30 and health["targets"]["oncall"]["dead"] == 30
            dead = bridge.cli("queue", "--dead")
            assert dead.returncode == 0, dead.stderr
            assert dead.stdout.count("id='disk:host=h") == 30, dead.stdout
            listing = json.loads(bridge.cli("queue", "--dead", "--json").stdout)
            assert len(listing) == 30 and all(row["last_error"] for row in listing), listing[:2]
            assert bridge.metric("oncall_deliveries_total", {"target": "oncall", "outcome": "dead"}) == 30
            assert dead.stdout.count("x" * 100) == 0, "dead-letter listing dumps alert bodies"

            # Not silently away: the platform comes back, nothing is sent until the operator replays.
            platform.up()
            time.sleep(1.0)
            assert platform.requests == []
            replay = bridge.cli("replay", "--target", "oncall")
            assert replay.returncode == 0 and "30" in replay.stdout, replay.stdout + replay.stderr
            platform.wait_for(30, timeout=30, only_accepted=True)
            bridge.wait_until(
                lambda: bridge.metric("oncall_outbox_dead", {"target": "oncall"}) == 0, timeout=10, message="replayed"
            )
        finally:
            platform.stop()


class TestCoalescing:
    """Issue 13 item 3: after an outage the platform gets each id's state, not its history."""

    def test_flapping_backlog_converges_with_two_deliveries_per_id(
        self, make_bridge: Callable[..., BridgeProcess]
    ) -> None:
        """Receiver down, 20 flips per id over 1k ids ending in mixed states, receiver up:
        every id ends in its latest state with at most 2 deliveries, the rest superseded."""
        ids, flips = 1000, 20
        levels = ("CRITICAL", "WARNING", "OK")
        platform = Receiver(default=200)
        platform.stop()
        bridge = make_bridge(
            outage_config(platform.url, coalesce="worst-then-latest", backoff_initial="1s", backoff_max="2s")
        )
        try:
            final: Dict[str, str] = {}
            for j in range(flips):  # one round per flip: an id's events are posted in order
                bodies = []
                for i in range(ids):
                    key, level = f"cpu:host=h{i:04d}", levels[(i + j) % 3]
                    final[key] = level
                    bodies.append(json.dumps(kapacitor_event(key, level, details=f"flip {j}")).encode())
                assert set(post_many(bridge.port, "oncall", bodies)) == {202}
            assert sorted(set(final.values())) == ["CRITICAL", "OK", "WARNING"]
            bridge.wait_until(
                lambda: (bridge.metric("oncall_outbox_pending", {"target": "oncall"}) or 0) <= 2 * ids,
                timeout=60,
                message="backlog coalesced",
            )
            time.sleep(1.0)  # attempts started before the last post have failed and been re-planned
            platform.up()
            bridge.wait_until(
                lambda: bridge.metric("oncall_outbox_pending", {"target": "oncall"}) == 0,
                timeout=120,
                message="drained",
            )
            got: Dict[str, List[str]] = {}
            for rec in platform.requests:
                if rec.status == 200:
                    event = rec.json()
                    got.setdefault(event["id"], []).append(event["level"])
            assert set(got) == set(final)
            too_many = {k: v for k, v in got.items() if len(v) > 2}
            assert not too_many, list(too_many.items())[:5]
            wrong = {k: (v, final[k]) for k, v in got.items() if v[-1] != final[k]}
            assert not wrong, list(wrong.items())[:5]
            # An id that ends OK was CRITICAL on the way: the platform saw it open, then close.
            assert all(got[k] == ["CRITICAL", "OK"] for k, level in final.items() if level == "OK")
            delivered = sum(len(v) for v in got.values())
            superseded = ids * flips - delivered
            assert bridge.metric("oncall_deliveries_total", {"target": "oncall", "outcome": "superseded"}) == superseded
            table = json.loads(bridge.cli("queue", "--json").stdout)
            assert table["oncall"]["superseded"] == superseded and table["oncall"]["delivered"] == delivered
        finally:
            platform.stop()
