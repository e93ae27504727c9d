"""Fixtures running a real Alertmanager (``scripts/alertmanager-build``) with a capturing webhook."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.alertmanager.peer import Alertmanager, ensure_built
from tests.bridge.harness import Receiver

#: Short enough that "stays active for 3 x resolve_timeout" takes seconds, long enough for a loaded CI box.
RESOLVE_TIMEOUT = 6.0


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build Alertmanager before the first test runs, so a cold build is not a test's timeout."""
    if session.config.option.collectonly:
        return
    here = Path(__file__).parent
    if any(Path(str(item.path)).is_relative_to(here) for item in session.items):
        try:
            ensure_built()
        except Exception:  # noqa: BLE001 - the fixture reports the failure
            pass


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    """Where Alertmanager sends its notifications (answers 200, records every body)."""
    rx = Receiver(default=200)
    try:
        yield rx
    finally:
        rx.stop()


@pytest.fixture
def alertmanager(webhook: Receiver, tmp_path: Path) -> Iterator[Alertmanager]:
    am = Alertmanager(webhook.url + "/hook", resolve_timeout=f"{RESOLVE_TIMEOUT:g}s", workdir=tmp_path / "am")
    am.start()
    try:
        yield am
    finally:
        am.kill9()
        am.stop()
