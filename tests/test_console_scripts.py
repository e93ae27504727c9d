"""The installed console scripts: ``--version`` from the package metadata, ``--help`` that orients."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from udf.options import OPTIONS

BIN = Path(sys.executable).parent
VERSION = importlib.metadata.version("kapacitor-oncall")
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("script", ["kapacitor-alert-state", "kapacitor-oncall-bridge"])
def test_version(script: str) -> None:
    """Each console script prints its name and the installed version, and exits 0."""
    proc = subprocess.run([str(BIN / script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{script} {VERSION}"


def test_alert_state_help_says_who_starts_it_and_lists_every_option() -> None:
    """--help names kapacitord as the one that starts it and lists each @alertState() option with its types."""
    proc = subprocess.run(
        [str(BIN / "kapacitor-alert-state"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "kapacitord starts this program itself" in out and "[udf.functions.alertState]" in out
    for o in OPTIONS:
        assert re.search(rf"^\s+\.{o.name}\({re.escape(', '.join(o.types))}\)\s+\S", out, re.M), o.name


def test_readme_options_table_lists_every_option() -> None:
    """The README's options table and the declarations name the same options."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index("### Options"):]
    table = table[: table.index("\n\n", table.index("| option"))]
    named = set(re.findall(r"`([A-Za-z]+)`", "\n".join(line.split("|")[1] for line in table.splitlines() if line.startswith("| `"))))
    assert named == {o.name for o in OPTIONS}
