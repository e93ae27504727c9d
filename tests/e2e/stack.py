"""The alert path's peers for e2e tests: a strict platform receiver, the bridge, kapacitord.

The conftest's ``stack`` fixture builds one per call: a strict local platform receiver
(tests/receivers: it refuses anything the real platform would refuse), ``kapacitor-oncall-bridge
serve`` as a subprocess with a token, and kapacitord running the example config whose
``[[httppost]] oncall-bridge`` endpoint points at the bridge with that token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tests.bridge.harness import BridgeProcess
from tests.e2e.kapacitord import Kapacitord
from tests.receivers import Receiver

TOKEN = "e2e-bridge-token-5f2c"
TARGET = "oncall"  # the example config posts to /alerts/oncall


def bridge_config(receiver: Receiver, *sections: str, token: str = TOKEN) -> str:
    """A bridge config with one target, ``TARGET``, posting to ``receiver``; ``sections``
    are extra TOML tables (e.g. ``[kapacitor]``) placed before the target."""
    table = receiver.target_table()
    lines = [f'{key} = "{value}"' for key, value in table.items()]
    return "\n".join([
        "[server]",
        f'token = "{token}"',
        "",
        "[delivery]",
        'backoff_initial = "100ms"',
        'backoff_max = "1s"',
        "",
        *(f"{section}\n" for section in sections),
        "[[target]]",
        f'name = "{TARGET}"',
        *lines,
        "",
    ])


@dataclass
class Stack:
    receiver: Receiver
    bridge: BridgeProcess
    kapacitord: Kapacitord

    def bodies(self) -> list[Any]:
        """Every request the platform accepted, decoded, in arrival order."""
        return [r.json() for r in self.receiver.requests]


StackFactory = Callable[..., Stack]
