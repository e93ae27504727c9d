"""The package keeps its type hints honest: mypy --strict (settings in setup.cfg)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_clean() -> None:
    """udf/ and bridge/ type-check under mypy's strict mode."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "udf", "bridge"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
