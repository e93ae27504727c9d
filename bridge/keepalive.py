"""Alertmanager keep-alive: re-post every open alert each ``resend_interval``.

Alertmanager resolves an alert by itself ``resolve_timeout`` after its last update and
forgets every alert when it restarts (prometheus/alertmanager#2370), while Kapacitor
sends only state changes. So, like Prometheus, the bridge re-posts each alert the
platform believes is firing (the incident ledger, read from the store, so a
``kill -9`` of the bridge loses nothing) with ``endsAt`` four intervals ahead.

Re-posts never go through the outbox (they are state, not events) and never race a
delivery of the same id: each batch is sent inside ``Outbox.hold``, which yields only
idle keys and keeps their deliveries from starting until the batch is done; the
incident is re-read inside the hold, so an OK delivered just before is never undone.
Each HA member gets its own POST; one failing member delays nobody else.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence

from .config import TargetConfig
from .errors import DeliveryError
from .log import get_logger
from .backend import Store
from .targets.alertmanager import Alertmanager

__all__ = ["BATCH", "KeepAlive", "Round", "keepalive_targets"]

log = get_logger("bridge.keepalive")

#: Alerts per POST: few requests for 10k alerts, each well under a megabyte.
BATCH = 500


class _Send(Protocol):
    def send(self, target: TargetConfig, request: Any) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Round:
    """What one keep-alive round of one target did."""

    target: str
    alerts: int
    requests: int
    failed: int
    skipped_busy: int
    #: Alerts not tried this round because the Alertmanager failed the batch before.
    abandoned: int = 0


def keepalive_targets(targets: Mapping[str, TargetConfig]) -> Dict[str, TargetConfig]:
    """The configured targets that need keep-alive (type ``alertmanager``)."""
    return {name: t for name, t in targets.items() if isinstance(t.target, Alertmanager)}


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class KeepAlive:
    """One thread; each Alertmanager target is re-posted on its own schedule."""

    def __init__(
        self,
        targets: Mapping[str, TargetConfig],
        ledger: Store,
        sender: _Send,
        *,
        metrics: Any = None,
        clock: Callable[[], float] = time.time,
        batch: int = BATCH,
        allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        self.targets = keepalive_targets(targets)
        self.ledger = ledger
        self.sender = sender
        self.metrics = metrics
        self._clock = clock
        self._batch = batch
        #: With replicas, only the holder of the ``keepalive`` singleton re-posts.
        self._allowed = allowed
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        members = sum(len(t.target.members) for t in self.targets.values())
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(8, members)), thread_name_prefix="keepalive")

    def start(self) -> None:
        """Re-post at once (a restart must not let alerts lapse), then every interval."""
        if not self.targets:
            return
        self._thread = threading.Thread(target=self._run, name="keepalive", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False)
        self.sender.close()

    def _run(self) -> None:
        due = {name: 0.0 for name in self.targets}
        while not self._stopping.is_set():
            now = self._clock()
            for name, when in due.items():
                if now < when or not self._allowed():
                    continue
                interval = self.targets[name].target.resend_interval
                due[name] = now + interval
                try:
                    self.round(name, now)
                except Exception:  # noqa: BLE001 - the keep-alive thread must survive anything
                    log.error("keepalive.crashed", target=name, exc_info=True)
            self._stopping.wait(max(0.05, min(due.values()) - self._clock()))

    def round(self, name: str, now: Optional[float] = None) -> Round:
        """Re-post every open incident of target ``name`` once; returns what was done."""
        config = self.targets[name]
        am: Alertmanager = config.target
        incidents = self.ledger.incidents(name)
        alerts = requests = failed = busy = 0
        keys = [i.key for i in incidents]
        abandoned = 0
        for start, chunk in enumerate(_chunks(keys, self._batch)):
            with self.ledger.hold(name, chunk) as held:
                busy += len(chunk) - len(held)
                stamp = self._clock() if now is None else now
                batch = self._render(am, name, held, stamp)
                if not batch:
                    continue
                outcomes = self._post(config, am, batch)
            alerts += len(batch)
            requests += len(outcomes)
            failed += sum(1 for ok in outcomes if not ok)
            if not any(outcomes):
                # Unreachable: the other batches would each wait out a timeout while holding
                # their keys from delivery. The next round tries again.
                abandoned = len(keys) - (start + 1) * self._batch
                break
        result = Round(name, alerts, requests, failed, busy, max(0, abandoned))
        self._count(result)
        if alerts or failed:
            log.info(
                "keepalive.round",
                target=name,
                alerts=alerts,
                requests=requests,
                failed=failed,
                skipped_busy=busy,
                abandoned=result.abandoned,
            )
        return result

    def _render(self, am: Alertmanager, name: str, keys: Sequence[str], now: float) -> List[Dict[str, Any]]:
        """The alerts of the held keys that are still open (re-read inside the hold)."""
        out: List[Dict[str, Any]] = []
        for key in keys:
            told = self.ledger.told(name, key)
            if told is None:
                continue
            alert = am.keepalive(told, now)
            if alert is not None:
                out.append(alert)
        return out

    def _post(self, config: TargetConfig, am: Alertmanager, batch: List[Dict[str, Any]]) -> List[bool]:
        """POST the batch to every member at once; one slow member does not delay the others."""
        futures = [self._pool.submit(self._post_one, config, am, batch, url) for url in am.members]
        return [f.result() for f in futures]

    def _post_one(self, config: TargetConfig, am: Alertmanager, batch: List[Dict[str, Any]], url: str) -> bool:
        try:
            self.sender.send(config, am.request(batch, url))
            return True
        except DeliveryError as exc:
            log.warning(
                "keepalive.failed",
                target=config.name,
                member=am.members.index(url),
                alerts=len(batch),
                status=exc.status,
                error=str(exc),
            )
            return False

    def _count(self, result: Round) -> None:
        if self.metrics is None:
            return
        self.metrics.keepalive_alerts.labels(result.target).inc(result.alerts)
        if result.failed:
            self.metrics.keepalive_errors.labels(result.target).inc(result.failed)
