"""A real promtool, built once from the Go module proxy by scripts/promtool-build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.bridge.conftest import make_bridge, receiver  # noqa: F401 - shared fixtures

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "promtool-build"


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Path of the promtool binary (the build script is idempotent and takes a file lock)."""
    proc = subprocess.run(
        [str(BUILD_SCRIPT)], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    tail = "\n".join(proc.stderr.splitlines()[-30:])
    assert proc.returncode == 0, f"{BUILD_SCRIPT} failed ({proc.returncode}):\n{tail}"
    binary = Path(proc.stdout.strip().splitlines()[-1]) / "promtool"
    assert os.access(binary, os.X_OK), f"{BUILD_SCRIPT} printed no usable promtool:\n{tail}"
    return binary
