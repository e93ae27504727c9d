"""A real Prometheus Alertmanager on loopback, built by ``scripts/alertmanager-build``.

Each instance gets a free port, its own ``--storage.path`` and no gossip
(``--cluster.listen-address=``). Its config routes everything to one webhook
receiver (``webhook_url``: a test :class:`~tests.bridge.harness.Receiver`) with a
short ``resolve_timeout`` and group waits, so the tests see in seconds what
production sees in minutes. ``kill9`` + ``start`` is a real restart: alerts live in
memory only and are gone afterwards.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import requests

from tests.bridge.harness import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "alertmanager-build"

__all__ = ["Alertmanager", "AlertmanagerError", "ensure_built"]


class AlertmanagerError(RuntimeError):
    """The build or the process failed; the message carries its output."""


def ensure_built() -> Path:
    """The bin dir holding ``alertmanager``: built once, cached, locked against parallel builds."""
    done = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise AlertmanagerError(f"scripts/alertmanager-build failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def config_yaml(webhook_url: str, resolve_timeout: str, group_wait: str = "1s", group_interval: str = "2s") -> str:
    """Route every alert to one webhook, grouped per id so each notification is one id's."""
    return f"""\
global:
  resolve_timeout: {resolve_timeout}
route:
  receiver: capture
  group_by: [alertname, kapacitor_id]
  group_wait: {group_wait}
  group_interval: {group_interval}
  repeat_interval: 1h
receivers:
  - name: capture
    webhook_configs:
      - url: "{webhook_url}"
        send_resolved: true
"""


class Alertmanager:
    """One ``alertmanager`` process; ``url`` is its base URL (``/api/v2/alerts`` is the API)."""

    def __init__(self, webhook_url: str, *, resolve_timeout: str = "6s", workdir: Optional[Path] = None) -> None:
        self.bin = ensure_built() / "alertmanager"
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="alertmanager-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = self.workdir / "alertmanager.yml"
        self.config_path.write_text(config_yaml(webhook_url, resolve_timeout))
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.runs = 0
        self._session = requests.Session()
        self._session.trust_env = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"alertmanager-{self.runs}.log"

    def start(self, timeout: float = 20.0) -> "Alertmanager":
        self.runs += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.bin),
                    f"--config.file={self.config_path}",
                    f"--storage.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--web.external-url={self.url}",
                    "--cluster.listen-address=",
                    "--log.level=debug",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={k: v for k, v in os.environ.items() if not k.endswith("_proxy") and not k.endswith("_PROXY")},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AlertmanagerError(f"alertmanager exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                if self._session.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise AlertmanagerError(f"alertmanager not ready within {timeout}s:\n{self.log_text()}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._session.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def alerts(self, **filters: Any) -> List[Dict[str, Any]]:
        """``GET /api/v2/alerts`` (every alert Alertmanager holds, with ``status.state``)."""
        params = {k: str(v).lower() for k, v in filters.items()}
        answer = self._session.get(self.url + "/api/v2/alerts", params=params, timeout=5)
        answer.raise_for_status()
        return list(answer.json())

    def active(self) -> Dict[str, List[str]]:
        """``kapacitor_id`` -> severities of the active (unresolved) alerts."""
        out: Dict[str, List[str]] = {}
        for alert in self.alerts(active="true", silenced="true", inhibited="true"):
            labels = alert["labels"]
            out.setdefault(labels.get("kapacitor_id", ""), []).append(labels.get("severity", ""))
        return {k: sorted(v) for k, v in out.items()}

    def post(self, alerts: List[Dict[str, Any]]) -> requests.Response:
        return self._session.post(self.url + "/api/v2/alerts", json=alerts, timeout=5)

    def received(self, status: str) -> float:
        """Alertmanager's own ``alertmanager_alerts_received_total{status=...}`` since this start."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self._session.get(self.url + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "alertmanager_alerts_received_total" and sample.labels.get("status") == status:
                    return float(sample.value)
        return 0.0
