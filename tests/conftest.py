"""Suite-wide rules: in CI a skipped test is a failed promise."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from tests.pgserver import PgServer


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


@pytest.fixture(scope="session")
def pg_server() -> "Iterator[PgServer]":
    """One private PostgreSQL server per test session (fsync on); tests create their own databases."""
    from tests.pgserver import PgServer

    server = PgServer().start()
    yield server
    server.close()
