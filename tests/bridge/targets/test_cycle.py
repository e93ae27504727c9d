"""Every target type through the real bridge subprocess: trigger, then resolve, at a strict receiver.

One bridge serves one ``[[target]]`` per type, each pointing at that platform's
strict receiver on loopback. The receiver only records an incident for requests
that pass its schema checks, so "opened then resolved" proves the whole path:
HTTP intake, outbox, delivery, formatter and platform semantics. ``send-test``
is checked the same way, as a separate CLI process against the same config.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, Mapping

import pytest

from bridge.delivery import SEND_TEST_ID
from tests.bridge.harness import BridgeProcess, kapacitor_event
from tests.receivers import RECEIVERS

TYPES = sorted(RECEIVERS)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def _config(tables: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["[server]", "", "[store]", "", "[delivery]", 'timeout = "5s"', 'backoff_initial = "0.1s"', ""]
    for name, table in tables.items():
        lines.append("[[target]]")
        lines.append(f"name = {json.dumps(name)}")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def platforms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """A running strict receiver per target type."""
    started = {t: RECEIVERS[t]().start() for t in TYPES}
    try:
        yield started
    finally:
        for receiver in started.values():
            receiver.stop()


@pytest.fixture(scope="module")
def bridge(platforms: Dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """One bridge with a target named after each type."""
    tables = {t.replace("-", "_"): rx.target_table() for t, rx in platforms.items()}
    process = BridgeProcess(_config(tables), tmp_path_factory.mktemp("bridge"))
    process.start()
    try:
        yield process
    finally:
        process.stop()
        process.close()


@pytest.mark.parametrize("type_name", TYPES)
def test_trigger_then_resolve(type_name: str, bridge: BridgeProcess, platforms: Dict[str, Any]) -> None:
    """A CRITICAL then an OK for one id opens and then resolves the incident at the platform."""
    receiver = platforms[type_name]
    ident = f"cycle_{type_name.replace('-', '_')}:host=web-01"
    name = type_name.replace("-", "_")
    status, answer = bridge.post_alert(name, kapacitor_event(ident, "CRITICAL"))
    assert status < 300, answer
    bridge.wait_until(lambda: receiver.incidents.get(ident) == "open", 15, f"{type_name} incident open")
    status, answer = bridge.post_alert(name, kapacitor_event(ident, "OK", previous_level="CRITICAL", duration=60_000_000_000))
    assert status < 300, answer
    bridge.wait_until(lambda: receiver.incidents.get(ident) == "resolved", 15, f"{type_name} incident resolved")
    assert receiver.rejected == []


@pytest.mark.parametrize("type_name", TYPES)
def test_send_test(type_name: str, bridge: BridgeProcess, platforms: Dict[str, Any]) -> None:
    """``send-test`` reaches each strict receiver and its ``--level OK`` resolves the test alert."""
    receiver = platforms[type_name]
    name = type_name.replace("-", "_")
    done = bridge.cli("send-test", "--target", name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert receiver.incidents.get(SEND_TEST_ID) == "open"
    done = bridge.cli("send-test", "--target", name, "--level", "OK")
    assert done.returncode == 0, done.stdout + done.stderr
    assert receiver.incidents.get(SEND_TEST_ID) == "resolved"
    assert receiver.rejected == []
