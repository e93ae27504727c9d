"""Heartbeats: tell the on-call platform, every interval, that the alert path is alive.

A beat is sent only while the bridge itself is healthy (store writable,
workers running) and, when ``kapacitor_url`` is set, while Kapacitor answers
``GET /kapacitor/v1/ping`` with 204. So the platform's heartbeat alert fires
when the bridge dies, when its disk fills, or when Kapacitor stops, which are
exactly the failures that would otherwise make every other alert silent.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

import requests

from .config import HeartbeatConfig
from .log import get_logger
from .metrics import Metrics
from .transport import USER_AGENT

__all__ = ["Heartbeat", "ping_kapacitor"]

log = get_logger("bridge.heartbeat")


def ping_kapacitor(session: requests.Session, base_url: str, timeout: float) -> Optional[str]:
    """None when Kapacitor answers its ping with 204, else why not (no URL in the text)."""
    try:
        resp = session.get(f"{base_url}/kapacitor/v1/ping", timeout=timeout, allow_redirects=False)
        resp.close()
    except requests.RequestException as exc:
        return f"kapacitor unreachable: {type(exc).__name__}"
    if resp.status_code != 204:
        return f"kapacitor ping answered HTTP {resp.status_code}"
    return None


class Heartbeat:
    """One ``[[heartbeat]]`` entry running in its own daemon thread."""

    def __init__(
        self,
        config: HeartbeatConfig,
        healthy: Callable[[], bool],
        *,
        metrics: Optional[Metrics] = None,
    ) -> None:
        self.config = config
        self._healthy = healthy
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.session = requests.Session()
        self.session.verify = config.ca_file if config.ca_file else True
        self.session.headers["User-Agent"] = USER_AGENT
        self.sent = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.config.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.session.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the heartbeat thread must keep beating
                log.error("heartbeat.crashed", name=self.config.name, exc_info=True)
            self._stop.wait(self.config.interval)

    def beat(self) -> bool:
        """One round: check health (and Kapacitor), then call the URL. True if a beat was sent."""
        name = self.config.name
        reason = None if self._healthy() else "bridge unhealthy"
        if reason is None and self.config.kapacitor_url:
            reason = ping_kapacitor(self.session, self.config.kapacitor_url, self.config.timeout)
        if reason is not None:
            log.warning("heartbeat.skipped", name=name, reason=reason)
            self._count("skipped")
            return False
        try:
            resp = self.session.request(
                self.config.method, self.config.url, timeout=self.config.timeout, allow_redirects=False
            )
            resp.close()
        except requests.RequestException as exc:
            log.warning("heartbeat.failed", name=name, error=type(exc).__name__)
            self._count("failed")
            return False
        if not 200 <= resp.status_code < 300:
            log.warning("heartbeat.failed", name=name, status=resp.status_code)
            self._count("failed")
            return False
        self.sent += 1
        log.debug("heartbeat.sent", name=name, status=resp.status_code)
        self._count("sent")
        return True

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.heartbeats.labels(self.config.name, outcome).inc()
