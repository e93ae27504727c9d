"""Heartbeats: sent only while the bridge is healthy and Kapacitor answers its ping."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
import structlog

from bridge.config import HeartbeatConfig
from bridge.heartbeat import Heartbeat

from .harness import BridgeProcess, Receiver, Recorded, ReplySpec

MakeBridge = Callable[..., BridgeProcess]


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Heartbeat logs go nowhere in-process; the subprocess test reads real JSON logs."""
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    yield
    structlog.reset_defaults()


class Kapacitor:
    """A stand-in answering ``GET /kapacitor/v1/ping`` with a settable status."""

    def __init__(self) -> None:
        self.status = 204
        self.receiver = Receiver(handler=self._answer)

    def _answer(self, rec: Recorded) -> ReplySpec:
        return self.status if rec.path == "/kapacitor/v1/ping" else 404

    @property
    def url(self) -> str:
        return self.receiver.url


@pytest.fixture
def kapacitor() -> Iterator[Kapacitor]:
    k = Kapacitor()
    yield k
    k.receiver.stop()


def beat(config: HeartbeatConfig, healthy: bool = True) -> bool:
    hb = Heartbeat(config, lambda: healthy)
    try:
        return hb.beat()
    finally:
        hb.stop()


class TestBeat:
    def test_sent_when_healthy(self, receiver: Receiver) -> None:
        """A healthy bridge calls the heartbeat URL (GET by default)."""
        receiver.set_default(200)
        assert beat(HeartbeatConfig("hb", receiver.url + "/hb/"))
        (request,) = receiver.requests
        assert request.method == "GET" and request.path == "/hb/"

    def test_post_method(self, receiver: Receiver) -> None:
        """method = POST is honoured."""
        receiver.set_default(200)
        assert beat(HeartbeatConfig("hb", receiver.url + "/hb/", method="POST"))
        assert receiver.requests[0].method == "POST"

    def test_skipped_when_unhealthy(self, receiver: Receiver) -> None:
        """An unhealthy bridge stays silent so the platform's heartbeat alert fires."""
        assert not beat(HeartbeatConfig("hb", receiver.url + "/hb/"), healthy=False)
        assert receiver.requests == []

    def test_follows_kapacitor_ping(self, receiver: Receiver, kapacitor: Kapacitor) -> None:
        """With kapacitor_url, beats go only while the ping answers 204."""
        receiver.set_default(200)
        config = HeartbeatConfig("hb", receiver.url + "/hb/", kapacitor_url=kapacitor.url)
        assert beat(config)
        kapacitor.status = 500
        assert not beat(config)
        kapacitor.receiver.stop()
        assert not beat(config)
        assert len(receiver.requests) == 1
        assert [r.path for r in kapacitor.receiver.requests] == ["/kapacitor/v1/ping"] * 2

    def test_platform_error_reported(self, receiver: Receiver) -> None:
        """A refused heartbeat counts as not sent."""
        receiver.set_default(429)
        assert not beat(HeartbeatConfig("hb", receiver.url + "/hb/"))


class TestInBridge:
    def test_periodic_and_gated(self, receiver: Receiver, kapacitor: Kapacitor, make_bridge: MakeBridge) -> None:
        """The running bridge beats every interval and stops when Kapacitor stops answering."""
        receiver.set_default(200)
        bridge = make_bridge(
            f"""
[[heartbeat]]
name = "oncall-hb"
url = "{receiver.url}/integrations/v1/formatted_webhook/HbToken123456789/heartbeat/"
interval = "200ms"
kapacitor_url = "{kapacitor.url}"
"""
        )
        receiver.wait_for(3, timeout=10)
        kapacitor.status = 503
        bridge.wait_until(
            lambda: (bridge.metric("oncall_heartbeats_total", {"name": "oncall-hb", "outcome": "skipped"}) or 0) >= 2
        )
        sent = len(receiver.requests)
        bridge.wait_until(
            lambda: (bridge.metric("oncall_heartbeats_total", {"name": "oncall-hb", "outcome": "skipped"}) or 0) >= 4
        )
        assert len(receiver.requests) == sent
        assert bridge.events("heartbeat.skipped")[0]["reason"] == "kapacitor ping answered HTTP 503"
        assert "HbToken123456789" not in bridge.log_text()
