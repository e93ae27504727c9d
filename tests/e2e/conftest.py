"""Fixtures that run a real kapacitord (built once by scripts/kapacitor-build) on loopback.

Each instance renders kapacitor.conf.example into its own tmp dir (see
tests/e2e/kapacitord.py:render_config): paths under /var/lib/kapacitor move into the tmp dir,
the port is a free one, the bridge URL/token and the UDF command are the test's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional, Protocol

import pytest

from tests.e2e.kapacitord import (
    REPO_ROOT,
    Kapacitord,
    KapacitordError,
    ensure_built,
    free_port,
    render_config,
)

#: How the tests run the alertState UDF: this interpreter, the working tree's module.
UDF_PROG: list[str] = [sys.executable, "-m", "udf.alert_state"]
#: Nothing listens on the discard port: alerts posted to the default bridge URL fail fast.
UNUSED_BRIDGE_URL = "http://127.0.0.1:9/alerts/oncall"
BRIDGE_TOKEN = "test-token"

class StartKapacitord(Protocol):
    """Signature of the ``start_kapacitord`` factory fixture."""

    def __call__(
        self,
        *,
        udf_prog: Optional[Sequence[str]] = ...,
        bridge_url: str = ...,
        bridge_token: str = ...,
        snapshot_interval: str = ...,
        extra: str = ...,
        env: Optional[dict[str, str]] = ...,
        name: str = ...,
    ) -> Kapacitord: ...


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build kapacitord before the first test runs.

    A cold build takes minutes; done inside the session fixture it would count against the
    first e2e test's pytest-timeout. Failures are left to the fixture, which reports them.
    """
    if session.config.option.collectonly:
        return
    here = Path(__file__).parent
    if any(Path(str(item.path)).is_relative_to(here) for item in session.items):
        try:
            ensure_built()
        except KapacitordError:
            pass


@pytest.fixture(scope="session")
def kapacitor_bin() -> Path:
    """Directory with the ``kapacitord`` and ``kapacitor`` binaries (built on first use)."""
    return ensure_built()


def _udf_env() -> dict[str, str]:
    """Let ``python -m udf.alert_state`` import the working tree even when not pip-installed."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else "")}


@pytest.fixture
def start_kapacitord(tmp_path: Path, kapacitor_bin: Path) -> Iterator[StartKapacitord]:
    """Factory: start a kapacitord from the rendered example; all are stopped at teardown.

    ``udf_prog=None`` omits the alertState UDF (kapacitord probes every configured UDF at
    startup and refuses to start if it is broken). Each call gets its own dir ``tmp_path/<name>``.
    """
    started: list[Kapacitord] = []

    def start(
        *,
        udf_prog: Optional[Sequence[str]] = UDF_PROG,
        bridge_url: str = UNUSED_BRIDGE_URL,
        bridge_token: str = BRIDGE_TOKEN,
        snapshot_interval: str = "1s",
        extra: str = "",
        env: Optional[dict[str, str]] = None,
        name: str = "",
    ) -> Kapacitord:
        workdir = tmp_path / (name or f"kapacitord-{len(started)}")
        full_env = {**_udf_env(), **(env or {})}
        attempts = 3
        for attempt in range(1, attempts + 1):
            port = free_port()
            config = render_config(
                workdir,
                http_port=port,
                udf_prog=udf_prog,
                bridge_url=bridge_url,
                bridge_token=bridge_token,
                snapshot_interval=snapshot_interval,
                extra=extra,
            )
            k = Kapacitord(kapacitor_bin, config, workdir, http_port=port, env=full_env)
            try:
                k.start()
            except KapacitordError as exc:
                # free_port() is racy: another process may have taken the port meanwhile.
                if "address already in use" in str(exc) and attempt < attempts:
                    continue
                raise
            started.append(k)
            return k
        raise AssertionError("unreachable")

    yield start
    for k in reversed(started):
        k.close()


@pytest.fixture
def kapacitord(start_kapacitord: StartKapacitord) -> Kapacitord:
    """A running loopback kapacitord with the alertState UDF (``python -m udf.alert_state``)."""
    return start_kapacitord()
