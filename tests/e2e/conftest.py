"""Fixtures that run a real kapacitord (built once by scripts/kapacitor-build) on loopback.

Every test that uses a kapacitord runs once per version in ``SUPPORTED_VERSIONS`` (1.8.6, the
current line, and 1.5.9, the oldest supported): ``kapacitor_bin`` is a session fixture
parametrised by version, so pytest groups the tests by version and each binary is built (or
found in the cache) once. ``KAPACITOR_VERSIONS=1.8.6`` narrows the matrix locally; CI runs all.

Each instance renders kapacitor.conf.example into its own tmp dir (see
tests/e2e/kapacitord.py:render_config): paths under /var/lib/kapacitor move into the tmp dir,
the port is a free one, the bridge URL/token and the UDF command are the test's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Protocol

import pytest

from tests.bridge.harness import BridgeProcess
from tests.e2e.influxd import Influxd
from tests.e2e.influxd import ensure_built as ensure_influxd_built
from tests.e2e.stack import TARGET, TOKEN, Stack, StackFactory, bridge_config
from tests.receivers import RECEIVERS, Receiver
from tests.e2e.kapacitord import (
    REPO_ROOT,
    Kapacitord,
    KapacitordError,
    ensure_built,
    free_port,
    render_config,
    versions_under_test,
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
        influxdb_url: Optional[str] = ...,
    ) -> Kapacitord: ...


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the kapacitord versions (and influxd) the selected tests use before the first runs.

    A cold build takes minutes; done inside the session fixture it would count against the
    first e2e test's pytest-timeout. Failures are left to the fixtures, which report them.
    """
    if session.config.option.collectonly:
        return
    here = Path(__file__).parent
    items = [item for item in session.items if Path(str(item.path)).is_relative_to(here)]
    versions = {
        item.callspec.params["kapacitor_version"]
        for item in items
        if hasattr(item, "callspec") and "kapacitor_version" in item.callspec.params
    }
    for version in sorted(versions, key=versions_under_test().index):
        try:
            ensure_built(version)
        except KapacitordError:
            pass
    if any("influxd" in getattr(item, "fixturenames", ()) for item in items):
        try:
            ensure_influxd_built()
        except KapacitordError:
            pass


@pytest.fixture(scope="session", params=versions_under_test())
def kapacitor_version(request: pytest.FixtureRequest) -> str:
    """The kapacitord version this test runs against (the test id carries it: ``[1.8.6]``)."""
    version: str = request.param
    return version


@pytest.fixture(scope="session")
def kapacitor_bin(kapacitor_version: str) -> Path:
    """Directory with that version's ``kapacitord`` and ``kapacitor`` binaries (built on first use)."""
    return ensure_built(kapacitor_version)


def _udf_env() -> dict[str, str]:
    """Let ``python -m udf.alert_state`` import the working tree even when not pip-installed."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else "")}


@pytest.fixture
def start_kapacitord(
    tmp_path: Path, kapacitor_bin: Path, kapacitor_version: str
) -> Iterator[StartKapacitord]:
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
        influxdb_url: Optional[str] = None,
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
                influxdb_url=influxdb_url,
            )
            k = Kapacitord(
                kapacitor_bin, config, workdir, http_port=port, env=full_env, version=kapacitor_version
            )
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


@pytest.fixture
def stack(start_kapacitord: "StartKapacitord", tmp_path: Path) -> Iterator[StackFactory]:
    """Factory: receiver of a target type + bridge + kapacitord wired to it (token as given).

    Further keyword arguments go to ``start_kapacitord`` (e.g. ``influxdb_url``).
    """
    made: list[tuple[Receiver, BridgeProcess]] = []

    def make(target_type: str, kapacitor_token: str = TOKEN, **kapacitord_options: Any) -> Stack:
        receiver = RECEIVERS[target_type]().start()
        bridge = BridgeProcess(bridge_config(receiver), tmp_path / f"bridge-{len(made)}")
        made.append((receiver, bridge))
        bridge.start()
        k = start_kapacitord(
            bridge_url=f"{bridge.url}/alerts/{TARGET}", bridge_token=kapacitor_token, **kapacitord_options
        )
        return Stack(receiver, bridge, k)

    yield make
    for receiver, bridge in reversed(made):
        code = bridge.stop()
        bridge.close()
        receiver.stop()
        assert code == 0, bridge.log_text()


# --------------------------------------------------------------------------------------------
# InfluxDB (the production source): one influxd per session, a fresh database per test
# --------------------------------------------------------------------------------------------

#: The database the shipped scripts read (``"telegraf"."autogen"``), recreated for every test.
INFLUX_DB = "telegraf"


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    """A real influxd (scripts/influxdb-build) on loopback, shared by the session's tests."""
    server = Influxd(ensure_influxd_built(), tmp_path_factory.mktemp("influxd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def influx_db(influxd: Influxd) -> Iterator[str]:
    """``telegraf`` created empty *before* the test starts kapacitord, dropped afterwards.

    kapacitord subscribes to the databases that exist when it starts (later ones only at the
    next subscriptions-sync-interval), and dropping the database drops the subscriptions of the
    test's kapacitord with it, so InfluxDB never forwards to a stopped kapacitord's port.
    """
    influxd.query(f'DROP DATABASE "{INFLUX_DB}"')
    influxd.query(f'CREATE DATABASE "{INFLUX_DB}"')
    yield INFLUX_DB
    influxd.query(f'DROP DATABASE "{INFLUX_DB}"')
