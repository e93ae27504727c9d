"""The status page of a PostgreSQL-backed bridge in a real browser: two replicas on one
database, the page of either shows the whole cluster (alerts accepted by the other, its
replicas and their singleton jobs), and its forms (silence, replay, drop) act on the
shared store, so a silence added on one replica's page holds deliveries on the other.

Chromium adds what an HTTP-level check would not: the sign-in cookie, the CSRF tokens in
the forms and the in-place refresh are exercised exactly as on the SQLite page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import psycopg
import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.bridge.harness import BridgeProcess, Receiver, kapacitor_event, wait_until
from tests.ui.test_status_page import TOKEN, Platform, _flash, _sign_in, _text

REPO = Path(__file__).resolve().parents[2]
#: Loopback only: never through a proxy from the environment.
HTTP = requests.Session()
HTTP.trust_env = False

Pair = Tuple[BridgeProcess, BridgeProcess, str]


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    p = Platform()
    yield p
    p.receiver.stop()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, platform: Platform, pg_server: Any) -> Iterator[Pair]:
    """Replicas a and b on one database; a accepted everything the page will show."""
    dsn = pg_server.create_database("ui")
    config = f"""
[server]
token = "{TOKEN}"

[delivery]
backoff_initial = "50ms"
backoff_max = "3s"
timeout = "2s"

[store]
backend = "postgres"
dsn = "env:BRIDGE_PG_DSN"
lease = "2s"

[[target]]
name = "pager"
type = "webhook"
url = "{platform.receiver.url}/pager"
"""
    made = []
    try:
        for name in ("a", "b"):
            bridge = BridgeProcess(config, tmp_path_factory.mktemp(f"ui-pg-{name}"), env={"BRIDGE_PG_DSN": dsn})
            bridge.token = TOKEN
            made.append(bridge.start())
        a, b = made
        assert a.post_alert("pager", kapacitor_event("cpu:host=web-01", "CRITICAL"))[0] == 202
        assert a.post_alert("pager", kapacitor_event("poison:host=web-02", "WARNING"))[0] == 202
        silence = {"matchers": ["id=~maint:.*"], "for": "2h", "comment": "kernel upgrade web-07", "created_by": "ops"}
        resp = HTTP.post(f"{a.url}/api/silences", json=silence, headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 201, resp.text
        wait_until(lambda: b.metric("oncall_silences_active") == 1, message="b reads the silence")
        assert a.post_alert("pager", kapacitor_event("maint:host=web-07", "CRITICAL"))[0] == 202
        wait_until(lambda: _states(dsn).get("maint:host=web-07") == "silenced", message="held by the silence")
        wait_until(lambda: platform.got("cpu:host=web-01"), message="delivery of cpu:host=web-01")
        wait_until(lambda: _states(dsn).get("poison:host=web-02") == "dead", message="poison dead")
        yield a, b, dsn
    finally:
        for bridge in made:
            bridge.close()


def _states(dsn: str) -> Dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return {k: s for k, s in conn.execute("SELECT key, state FROM oncall_outbox ORDER BY seq")}


def _replica_id(bridge: BridgeProcess) -> str:
    return str(bridge.healthz()[1]["store"]["replica"])


class TestClusterPage:
    def test_either_replica_shows_the_whole_cluster(self, browser: webdriver.Chrome, replicas: Pair) -> None:
        """b's page shows what a accepted, delivered and holds, both replicas and who runs which job."""
        a, b, _dsn = replicas
        browser.delete_all_cookies()
        browser.get(b.url + "/")
        assert _text(browser, "#sum-dead") == "1"
        assert _text(browser, "#sum-incidents") == "1"
        assert _text(browser, "#sum-silenced") == "1"
        held = browser.find_element(By.CSS_SELECTOR, '#queued tr[data-state="silenced"]')
        assert "maint:host=web-07" in held.text
        silence = browser.find_element(By.CSS_SELECTOR, "#silences li.silence")
        assert "id=~maint:.*" in silence.text and "1 held" in silence.text
        pager = browser.find_element(By.CSS_SELECTOR, '#targets tr[data-target="pager"]')
        assert "HTTP 400" in pager.find_element(By.CSS_SELECTOR, '[data-field="last-error"]').text
        assert "ago" in pager.find_element(By.CSS_SELECTOR, '[data-field="last-success"]').text
        assert "cpu:host=web-01" in _text(browser, "#incidents")
        delivered = browser.find_elements(By.CSS_SELECTOR, '#deliveries tr[data-state="delivered"]')
        assert any("cpu:host=web-01" in row.text for row in delivered)
        info = _text(browser, "#store-info")
        assert "postgres: database ui_" in info and _replica_id(b) in info and "password" not in info
        assert _text(browser, "#replica-id") == _replica_id(b)
        rows = browser.find_elements(By.CSS_SELECTOR, "#replicas tr[data-replica]")
        assert {r.get_attribute("data-replica") for r in rows} == {_replica_id(a), _replica_id(b)}

        def jobs() -> list[str]:
            """Every singleton job held by exactly one of the two (reloaded: a lease may be mid-renewal)."""
            browser.get(b.url + "/")
            cells = browser.find_elements(By.CSS_SELECTOR, '#replicas tr[data-replica] [data-field="jobs"]')
            return sorted(j for c in cells for j in c.text.split(", ") if j != "—")

        wait_until(lambda: jobs() == sorted(["expiry", "prune", "heartbeat", "keepalive", "reconcile", "silences"]),
                   message="the six singleton jobs, each on one replica")

    def test_page_refreshes_with_alerts_from_the_other_replica(self, browser: webdriver.Chrome,
                                                               replicas: Pair) -> None:
        """An alert accepted by a appears on b's page without a navigation."""
        a, b, _dsn = replicas
        browser.get(b.url + "/?refresh=1")
        browser.execute_script("window.__same_page = 'yes';")
        assert a.post_alert("pager", kapacitor_event("maint:host=web-08", "WARNING"))[0] == 202
        wait_until(lambda: "maint:host=web-08" in _text(browser, "#queued"), timeout=15, message="live refresh")
        assert browser.execute_script("return window.__same_page;") == "yes"


class TestClusterLooks:
    def test_replicas_fit_a_phone(self, browser: webdriver.Chrome, replicas: Pair, tmp_path: Path) -> None:
        """The extra Replicas card does not make the page wider than a phone screen.

        ``UPDATE_DOCS_SCREENSHOT=1`` copies a desktop screenshot to docs/status-page-replicas.png."""
        _a, b, _dsn = replicas
        browser.delete_all_cookies()
        browser.get(b.url + "/")
        desktop = tmp_path / "status-page-replicas.png"
        assert browser.save_screenshot(str(desktop))
        browser.set_window_size(412, 915)
        try:
            browser.get(b.url + "/")
            assert browser.find_element(By.ID, "replicas").is_displayed()
            width = browser.execute_script("return document.documentElement.scrollWidth;")
            inner = browser.execute_script("return window.innerWidth;")
            assert width <= inner + 1, f"page is {width}px wide on a {inner}px phone screen"
        finally:
            browser.set_window_size(1200, 1700)
        if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
            shutil.copyfile(desktop, REPO / "docs" / "status-page-replicas.png")


class TestClusterActions:
    def test_silence_form_holds_on_the_other_replica(self, browser: webdriver.Chrome, replicas: Pair,
                                                     platform: Platform) -> None:
        """Added on b's page, the silence holds an alert a accepts; expired there, it goes out exactly once."""
        a, b, dsn = replicas
        _sign_in(browser, b)
        browser.find_element(By.ID, "matchers").send_keys("host=web-42")
        browser.find_element(By.ID, "comment").send_keys("disk swap on web-42")
        browser.find_element(By.CSS_SELECTOR, "#silence-form button").click()
        silence_id = _flash(browser, "added").split()[1]
        wait_until(lambda: a.metric("oncall_silences_active") == 2, message="a reads the page's silence")
        event = kapacitor_event("cpu:host=web-42", "CRITICAL", tags={"host": "web-42"})
        assert a.post_alert("pager", event)[0] == 202
        wait_until(lambda: _states(dsn).get("cpu:host=web-42") == "silenced", message="held on the shared store")
        assert not platform.got("cpu:host=web-42")
        browser.get(b.url + "/")
        browser.find_element(By.CSS_SELECTOR, f'#silences li[data-id="{silence_id}"] button.expire').click()
        _flash(browser, "expired")
        got = wait_until(lambda: platform.got("cpu:host=web-42"), timeout=15, message="released delivery")
        assert got[0].json()["level"] == "CRITICAL"
        wait_until(lambda: _states(dsn).get("cpu:host=web-42") == "delivered", message="delivered")
        assert len(platform.got("cpu:host=web-42")) == 1

    def test_replay_and_drop_on_the_shared_store(self, browser: webdriver.Chrome, replicas: Pair,
                                                 platform: Platform) -> None:
        """Replay on b's page sends a's dead letter; a second dead letter is dropped from the database."""
        a, b, dsn = replicas
        _sign_in(browser, b)
        platform.poison = False
        browser.find_element(By.CSS_SELECTOR, '#dead li[data-key="poison:host=web-02"] button.replay').click()
        _flash(browser, "replayed 1 dead letter")
        wait_until(lambda: platform.got("poison:host=web-02"), timeout=15, message="replayed delivery")
        platform.poison = True
        assert a.post_alert("pager", kapacitor_event("poison:host=web-09", "CRITICAL"))[0] == 202
        wait_until(lambda: _states(dsn).get("poison:host=web-09") == "dead", timeout=15, message="second dead")
        browser.get(b.url + "/")
        browser.find_element(By.CSS_SELECTOR, '#dead li[data-key="poison:host=web-09"] button.drop').click()
        _flash(browser, "dropped dead letter")
        assert "poison:host=web-09" not in _states(dsn)
        assert not browser.find_elements(By.CSS_SELECTOR, '#dead li[data-key="poison:host=web-09"]')
