"""Suite-wide rules: in CI a skipped test is a failed promise."""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true, any skip or xfail turns the run red."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = len(reporter.stats.get("skipped", [])) + len(reporter.stats.get("xfailed", []))
    if skipped:
        reporter.write_line(f"CI: {skipped} test(s) skipped or xfailed; nothing may skip in CI", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
