"""The serving process's heap settling (bridge/heap.py), run in a fresh interpreter so the
test runner's own collector settings stay as they are."""

from __future__ import annotations

import json
import subprocess
import sys

from bridge.heap import YOUNG_THRESHOLD

_PROBE = """
import gc, json, weakref
from bridge import heap

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

before = gc.get_threshold()
kept = Node(); kept.me = kept                  # alive at start-up: frozen
dropped = cycle()                               # garbage at start-up: collected, not frozen
heap.settle()
frozen_kept = gc.get_freeze_count()
later = cycle()                                 # garbage made while serving
gc.collect()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen_kept,
                  "dropped_alive": dropped() is not None, "later_alive": later() is not None,
                  "enabled": gc.isenabled()}))
"""


def test_settle_freezes_survivors_collects_garbage_and_raises_the_young_threshold() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60)
    got = json.loads(out.stdout)
    young, middle, old = got["before"]
    assert young < YOUNG_THRESHOLD
    assert got["after"] == [YOUNG_THRESHOLD, middle, old]
    assert got["frozen"] > 1000  # the imported modules' objects, not just the probe's
    assert got["dropped_alive"] is False, "a cycle that was garbage at start-up was frozen instead of freed"
    assert got["later_alive"] is False, "the collector no longer frees cycles made after start-up"
    assert got["enabled"] is True
