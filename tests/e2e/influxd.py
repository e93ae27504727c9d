"""Drive a real InfluxDB OSS 1.x (influxd, built by scripts/influxdb-build) on loopback from tests.

Importable helper, not a test module; it does not import pytest. Every port it opens is on
127.0.0.1: the HTTP API and the RPC ``bind-address`` (backup/restore), which influxd would
otherwise put on all interfaces when the config names only a port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Optional, Union

import requests

from tests.e2e.kapacitord import REPO_ROOT, KapacitordError, _tail, free_port, run_build_script, terminate

BUILD_SCRIPT = REPO_ROOT / "scripts" / "influxdb-build"
DEFAULT_VERSION = "1.11.8"

_built: dict[str, Path] = {}
_build_lock = threading.Lock()


class InfluxdError(KapacitordError):
    """influxd failed to build, start or answer as expected (message carries the log tail)."""


def ensure_built(version: str = DEFAULT_VERSION) -> Path:
    """Bin dir holding ``influxd`` of ``version``, built once (file lock in the script)."""
    with _build_lock:
        if version not in _built:
            _built[version] = run_build_script(BUILD_SCRIPT, version, ("influxd",))
        return _built[version]


def render_config(workdir: Path, *, http_port: int, rpc_port: int) -> Path:
    """influxd config for a test: own dirs under ``workdir``, loopback only, nothing phoning home.

    The subscriber service stays on (it is what feeds kapacitord); the monitor does not store
    ``_internal`` (kapacitord would subscribe to it too) and continuous queries are off.
    """
    data = workdir / "influxdb"
    text = f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{data / 'meta'}"

[data]
  dir = "{data / 'data'}"
  wal-dir = "{data / 'wal'}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = true

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  flux-enabled = false

[continuous_queries]
  enabled = false

[logging]
  level = "info"
"""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "influxdb.conf"
    path.write_text(text, encoding="utf-8")
    return path


class Influxd:
    """One influxd process on loopback plus the few HTTP calls the tests make (/query, /write)."""

    def __init__(self, bin_dir: Path, workdir: Path, *, startup_timeout: float = 60.0) -> None:
        self.bin_dir = Path(bin_dir)
        self.workdir = Path(workdir)
        self.log_path = self.workdir / "influxd.log"
        self.startup_timeout = startup_timeout
        self.http_port = 0
        self.url = ""
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._log_file: Optional[IO[bytes]] = None
        self.session = requests.Session()

    def start(self, attempts: int = 3) -> "Influxd":
        """Start on free loopback ports (retrying when a port was taken meanwhile) and wait for /ping."""
        for attempt in range(1, attempts + 1):
            self.http_port, rpc_port = free_port(), free_port()
            self.url = f"http://127.0.0.1:{self.http_port}"
            config = render_config(self.workdir, http_port=self.http_port, rpc_port=rpc_port)
            self._log_file = open(self.log_path, "ab")
            self._proc = subprocess.Popen(
                [str(self.bin_dir / "influxd"), "run", "-config", str(config)],
                cwd=self.workdir,
                env={**os.environ, "TZ": "UTC"},
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                self._wait_ready()
                return self
            except InfluxdError as exc:
                self.stop()
                if "address already in use" not in str(exc) or attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                raise InfluxdError(f"influxd exited with code {code} during startup:\n{self.log_tail()}")
            try:
                if self.session.get(f"{self.url}/ping", timeout=2).status_code == 204:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise InfluxdError(f"influxd not ready after {self.startup_timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM, SIGKILL after ``timeout``; returns the exit code. Safe to call twice."""
        proc, self._proc = self._proc, None
        code = terminate(proc, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        return f"--- last {lines} lines of {self.log_path} ---\n" + _tail(text, lines)

    # -- HTTP ------------------------------------------------------------------------------------

    def query(self, q: str, db: str = "", *, epoch: Optional[str] = None) -> list[dict[str, Any]]:
        """POST /query (InfluxQL); returns the statements' results, raising on any error."""
        params = {"q": q}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        r = self.session.post(f"{self.url}/query", params=params, timeout=10)
        if r.status_code != 200:
            raise InfluxdError(f"query {q!r} -> {r.status_code}: {r.text[:500]}")
        results: list[dict[str, Any]] = r.json().get("results") or []
        errors = [res["error"] for res in results if "error" in res]
        if errors:
            raise InfluxdError(f"query {q!r}: {errors}")
        return results

    def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """Rows of a single-statement SELECT as dicts (tags of grouped series merged in)."""
        out: list[dict[str, Any]] = []
        for result in self.query(q, db):
            for series in result.get("series") or []:
                tags: Mapping[str, Any] = series.get("tags") or {}
                out += [{**tags, **dict(zip(series["columns"], values))} for values in series["values"]]
        return out

    def write(self, db: str, lines: Union[str, Iterable[str]], *, rp: str = "autogen", precision: str = "ms") -> None:
        """POST /write (line protocol); 204 or an InfluxdError with influxd's message."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        r = self.session.post(
            f"{self.url}/write",
            params={"db": db, "rp": rp, "precision": precision},
            data=body.encode("utf-8"),
            timeout=10,
        )
        if r.status_code != 204:
            raise InfluxdError(f"write to {db}.{rp} -> {r.status_code}: {r.text[:500]}")

    def subscriptions(self) -> Sequence[dict[str, Any]]:
        """``SHOW SUBSCRIPTIONS`` as rows with the database name merged in."""
        out: list[dict[str, Any]] = []
        for result in self.query("SHOW SUBSCRIPTIONS"):
            for series in result.get("series") or []:
                out += [{"db": series["name"], **dict(zip(series["columns"], v))} for v in series["values"]]
        return out

    def __repr__(self) -> str:
        return f"<Influxd {self.url} {'running' if self.running() else 'stopped'}>"
