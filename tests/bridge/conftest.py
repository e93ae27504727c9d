"""Fixtures for the bridge suites: a local receiver and bridge subprocesses that clean up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from .harness import BridgeProcess, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A loopback HTTP receiver answering 202 unless scripted otherwise."""
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def make_bridge(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    """Factory: ``make_bridge(config_text, start=True, **kw)``; every bridge is killed at teardown."""
    made: List[BridgeProcess] = []

    def make(config_text: str = "", start: bool = True, **kw: Any) -> BridgeProcess:
        bridge = BridgeProcess(config_text, tmp_path / f"bridge{len(made)}", **kw)
        made.append(bridge)
        if start:
            bridge.start()
        return bridge

    yield make
    for bridge in made:
        bridge.close()


def webhook_config(url: str, *, name: str = "hook", target_extra: str = "", **delivery: str) -> str:
    """A config with one webhook target and fast retries (durations as strings)."""
    settings = {"backoff_initial": "50ms", "backoff_max": "200ms", "timeout": "2s", **delivery}
    lines = "\n".join(f'{k} = "{v}"' for k, v in settings.items())
    return f"""
[delivery]
{lines}

[[target]]
name = "{name}"
type = "webhook"
url = "{url}"
{target_extra}
"""
