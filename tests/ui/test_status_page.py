"""The status page in a real browser against a real bridge with queued, dead, delivered and
silenced items: the DOM shows what the store holds, replay reaches the receiver, actions
need a signed-in session and a CSRF token."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.bridge.harness import BridgeProcess, Receiver, Recorded, Reply, ReplySpec, kapacitor_event, wait_until

REPO = Path(__file__).resolve().parents[2]
#: Loopback only: never through a proxy from the environment.
HTTP = requests.Session()
HTTP.trust_env = False
TOKEN = "ui-test-token-8d1f"


class Platform:
    """A receiver that refuses ids marked ``poison`` with 400 until told to accept them."""

    def __init__(self) -> None:
        self.poison = True
        self.receiver = Receiver(handler=self._answer)

    def _answer(self, rec: Recorded) -> ReplySpec:
        body = rec.body.decode(errors="replace")
        if "poison" in body and self.poison:
            return Reply(400, '{"error": "invalid payload"}')
        return 202

    def got(self, key: str) -> list[Recorded]:
        return [r for r in self.receiver.accepted() if key in r.body.decode(errors="replace")]


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    p = Platform()
    yield p
    p.receiver.stop()


@pytest.fixture(scope="module")
def down() -> Iterator[Receiver]:
    """A platform answering 503: its alerts stay queued, retrying."""
    r = Receiver(default=503)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, platform: Platform, down: Receiver) -> Iterator[BridgeProcess]:
    config = f"""
[server]
token = "{TOKEN}"

[delivery]
backoff_initial = "50ms"
backoff_max = "3s"
timeout = "2s"

[[target]]
name = "pager"
type = "webhook"
url = "{platform.receiver.url}/pager"

[[target]]
name = "chat"
type = "webhook"
url = "{down.url}/chat"
"""
    b = BridgeProcess(config, tmp_path_factory.mktemp("ui-bridge"))
    b.token = TOKEN
    b.start()
    try:
        assert b.post_alert("pager", kapacitor_event("cpu:host=web-01", "CRITICAL"))[0] == 202
        assert b.post_alert("pager", kapacitor_event("poison:host=web-02", "WARNING"))[0] == 202
        assert b.post_alert("chat", kapacitor_event("disk:host=db-1", "CRITICAL"))[0] == 202
        silence = {"matchers": ["id=~maint:.*"], "for": "2h", "comment": "kernel upgrade web-07", "created_by": "ops"}
        made = HTTP.post(f"{b.url}/api/silences", json=silence, headers={"Authorization": f"Bearer {TOKEN}"})
        assert made.status_code == 201, made.text
        assert b.post_alert("pager", kapacitor_event("maint:host=web-07", "CRITICAL"))[0] == 202
        wait_until(lambda: _states(b).get("maint:host=web-07") == "silenced", message="held by the silence")
        wait_until(lambda: platform.got("cpu:host=web-01"), message="delivery of cpu:host=web-01")
        wait_until(lambda: _states(b).get("poison:host=web-02") == "dead", message="poison dead")
        wait_until(lambda: down.requests, message="first attempt at chat")
        yield b
    finally:
        b.close()


def _states(bridge: BridgeProcess) -> Dict[str, str]:
    conn = sqlite3.connect(f"file:{bridge.db_path}?mode=ro", uri=True)
    try:
        return {k: s for k, s in conn.execute("SELECT key, state FROM outbox ORDER BY seq")}
    finally:
        conn.close()


def _text(browser: webdriver.Chrome, css: str) -> str:
    """The element's text; "" when the live refresh replaced it between finding and reading
    (pollers call this again)."""
    try:
        return browser.find_element(By.CSS_SELECTOR, css).text
    except StaleElementReferenceException:
        return ""


def _sign_in(browser: webdriver.Chrome, bridge: BridgeProcess, token: str = TOKEN) -> None:
    browser.get(bridge.url + "/ui/login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    if token == TOKEN:
        _flash(browser, "signed in")


def _flash(browser: webdriver.Chrome, expected: str) -> str:
    """Wait for the page after a form post to show ``expected`` in its message line."""

    def read() -> str:
        found = browser.find_elements(By.ID, "flash")
        try:
            return found[0].text if found and expected in found[0].text else ""
        except StaleElementReferenceException:
            return ""

    return str(wait_until(read, timeout=15, message=f"flash {expected!r}"))


def _dead_row(browser: webdriver.Chrome, key: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'#dead li[data-key="{key}"]')


class TestReadOnly:
    def test_page_shows_what_the_store_holds(self, browser: webdriver.Chrome, bridge: BridgeProcess) -> None:
        """Targets with health, queue, dead letter with its error, incident, delivery, store."""
        browser.get(bridge.url + "/")
        assert browser.title == "kapacitor-oncall bridge"
        assert _text(browser, "#sum-dead") == "1"
        assert _text(browser, "#sum-queued") == "1"
        assert _text(browser, "#sum-incidents") == "1"
        assert _text(browser, "#sum-silenced") == "1"
        held = browser.find_element(By.CSS_SELECTOR, '#queued tr[data-state="silenced"]')
        assert "maint:host=web-07" in held.text
        silence = browser.find_element(By.CSS_SELECTOR, "#silences li.silence")
        assert "id=~maint:.*" in silence.text and "kernel upgrade web-07" in silence.text and "1 held" in silence.text
        pager = browser.find_element(By.CSS_SELECTOR, '#targets tr[data-target="pager"]')
        assert "dead" in pager.find_element(By.CSS_SELECTOR, ".badge").text
        assert "HTTP 400" in pager.find_element(By.CSS_SELECTOR, '[data-field="last-error"]').text
        assert "ago" in pager.find_element(By.CSS_SELECTOR, '[data-field="last-success"]').text
        assert pager.find_element(By.CSS_SELECTOR, '[data-field="incidents"]').text == "1"
        chat = browser.find_element(By.CSS_SELECTOR, '#targets tr[data-target="chat"]')
        assert chat.find_element(By.CSS_SELECTOR, ".badge").text == "failing"
        assert "retrying since" in chat.text
        assert "HTTP 503" in chat.find_element(By.CSS_SELECTOR, '[data-field="last-error"]').text
        dead = _dead_row(browser, "poison:host=web-02")
        assert "HTTP 400" in dead.text and "WARNING" in dead.text
        assert browser.find_elements(By.CSS_SELECTOR, '#queued tr[data-state="pending"], #queued tr[data-state="inflight"]')
        assert "disk:host=db-1" in _text(browser, "#queued")
        delivered = browser.find_elements(By.CSS_SELECTOR, '#deliveries tr[data-state="delivered"]')
        assert any("cpu:host=web-01" in row.text for row in delivered)
        assert "cpu:host=web-01" in _text(browser, "#incidents")
        assert str(bridge.db_path) in _text(browser, "#store-info")

    def test_no_actions_without_signing_in(self, browser: webdriver.Chrome, bridge: BridgeProcess) -> None:
        """Signed out: no buttons, a sign-in link, and the token is nowhere in the page."""
        browser.delete_all_cookies()
        browser.get(bridge.url + "/")
        assert not browser.find_elements(By.CSS_SELECTOR, "button.replay, button.drop, #silence-form")
        assert browser.find_element(By.ID, "login-link")
        assert TOKEN not in browser.page_source

    def test_no_words_from_the_url(self, browser: webdriver.Chrome, bridge: BridgeProcess) -> None:
        """Outcome messages come from a one-shot cookie, so a link cannot make the page say things."""
        browser.get(bridge.url + "/?msg=Token+expired,+log+in+at+evil.example&bad=1")
        assert not browser.find_elements(By.ID, "flash")
        assert "evil.example" not in browser.page_source

    def test_post_without_session_is_refused(self, bridge: BridgeProcess) -> None:
        """A bare POST (no cookie) is sent to the login page and changes nothing."""
        seq = _dead_seq(bridge, "poison:host=web-02")
        resp = HTTP.post(f"{bridge.url}/ui/dead/{seq}/replay", data={"csrf": "x"}, allow_redirects=False)
        assert resp.status_code == 303 and resp.headers["Location"] == "/ui/login"
        assert _states(bridge)["poison:host=web-02"] == "dead"

    def test_page_refreshes_in_place(self, browser: webdriver.Chrome, bridge: BridgeProcess) -> None:
        """A new alert shows up without a navigation (the live part is re-fetched)."""
        browser.get(bridge.url + "/?refresh=1")
        browser.execute_script("window.__same_page = 'yes';")
        assert bridge.post_alert("chat", kapacitor_event("net:host=lb-1", "WARNING"))[0] == 202
        wait_until(lambda: "net:host=lb-1" in _text(browser, "#queued"), timeout=15, message="live refresh")
        assert browser.execute_script("return window.__same_page;") == "yes"


def _dead_seq(bridge: BridgeProcess, key: str) -> int:
    conn = sqlite3.connect(f"file:{bridge.db_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT seq FROM outbox WHERE key = ? AND state = 'dead'", (key,)).fetchone()[0])
    finally:
        conn.close()


class TestLooks:
    def test_screenshot_desktop_and_phone(self, browser: webdriver.Chrome, bridge: BridgeProcess, tmp_path: Path) -> None:
        """Readable widths: nothing overflows a phone screen sideways; screenshots are PNGs.

        ``UPDATE_DOCS_SCREENSHOT=1`` copies the desktop one to docs/status-page.png."""
        browser.delete_all_cookies()
        browser.set_window_size(1200, 1700)
        browser.get(bridge.url + "/")
        desktop = tmp_path / "status-page.png"
        assert browser.save_screenshot(str(desktop))
        assert desktop.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        browser.set_window_size(412, 915)
        browser.get(bridge.url + "/")
        width = browser.execute_script("return document.documentElement.scrollWidth;")
        inner = browser.execute_script("return window.innerWidth;")
        assert width <= inner + 1, f"page is {width}px wide on a {inner}px phone screen"
        size = browser.execute_script("return parseFloat(getComputedStyle(document.body).fontSize);")
        assert size >= 16
        phone = tmp_path / "status-page-phone.png"
        assert browser.save_screenshot(str(phone))
        browser.set_window_size(1200, 1700)
        if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copyfile(desktop, REPO / "docs" / "status-page.png")
            shutil.copyfile(phone, REPO / "docs" / "status-page-phone.png")


class TestActions:
    def test_wrong_token_is_refused(self, browser: webdriver.Chrome, bridge: BridgeProcess) -> None:
        browser.delete_all_cookies()
        _sign_in(browser, bridge, "not-the-token")
        _flash(browser, "wrong token")
        assert browser.get_cookie("oncall_session") is None

    def test_sign_in_sets_a_strict_httponly_cookie(self, browser: webdriver.Chrome, bridge: BridgeProcess) -> None:
        """The session cookie is HttpOnly + SameSite=Strict and holds no token."""
        _sign_in(browser, bridge)
        _flash(browser, "signed in")
        cookie = browser.get_cookie("oncall_session")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"] and TOKEN not in browser.page_source
        assert browser.find_elements(By.CSS_SELECTOR, "button.replay")

    def test_forged_posts_are_refused(self, browser: webdriver.Chrome, bridge: BridgeProcess) -> None:
        """With a valid session cookie but no/wrong CSRF token or a foreign Origin: 403."""
        _sign_in(browser, bridge)
        session = browser.get_cookie("oncall_session")
        assert session is not None
        cookies = {"oncall_session": session["value"]}
        seq = _dead_seq(bridge, "poison:host=web-02")
        url = f"{bridge.url}/ui/dead/{seq}/drop"
        csrf = browser.find_element(By.CSS_SELECTOR, f'#dead li[data-seq="{seq}"] input[name="csrf"]').get_attribute("value")
        assert HTTP.post(url, cookies=cookies, data={}, allow_redirects=False).status_code == 403
        assert HTTP.post(url, cookies=cookies, data={"csrf": "0" * 64}, allow_redirects=False).status_code == 403
        foreign = {"Origin": "http://evil.example"}
        resp = HTTP.post(url, cookies=cookies, data={"csrf": csrf}, headers=foreign, allow_redirects=False)
        assert resp.status_code == 403
        assert _states(bridge)["poison:host=web-02"] == "dead"

    def test_replay_reaches_the_receiver(self, browser: webdriver.Chrome, bridge: BridgeProcess, platform: Platform) -> None:
        """Press Replay on the dead letter: the platform gets it, the dead list empties."""
        _sign_in(browser, bridge)
        platform.poison = False
        _dead_row(browser, "poison:host=web-02").find_element(By.CSS_SELECTOR, "button.replay").click()
        _flash(browser, "replayed 1 dead letter")
        got = wait_until(lambda: platform.got("poison:host=web-02"), message="replayed delivery")
        assert got[0].json()["id"] == "poison:host=web-02"
        wait_until(lambda: _states(bridge)["poison:host=web-02"] == "delivered", message="delivered state")
        browser.get(bridge.url + "/")
        assert not browser.find_elements(By.CSS_SELECTOR, '#dead li[data-key="poison:host=web-02"]')

    def test_drop_removes_a_dead_letter(self, browser: webdriver.Chrome, bridge: BridgeProcess, platform: Platform) -> None:
        platform.poison = True
        assert bridge.post_alert("pager", kapacitor_event("poison:host=web-09", "CRITICAL"))[0] == 202
        wait_until(lambda: _states(bridge).get("poison:host=web-09") == "dead", message="second dead letter")
        _sign_in(browser, bridge)
        _dead_row(browser, "poison:host=web-09").find_element(By.CSS_SELECTOR, "button.drop").click()
        _flash(browser, "dropped dead letter")
        assert "poison:host=web-09" not in _states(bridge)
        assert not browser.find_elements(By.CSS_SELECTOR, '#dead li[data-key="poison:host=web-09"]')
        assert bridge.metric("oncall_outbox_dead", {"target": "pager"}) == 0

    def test_add_and_expire_a_silence(self, browser: webdriver.Chrome, bridge: BridgeProcess, platform: Platform) -> None:
        """The form adds a silence that holds the next alert; Expire now releases it to the platform."""
        _sign_in(browser, bridge)
        browser.find_element(By.ID, "matchers").send_keys("host=web-42\nlevel!=INFO")
        duration = browser.find_element(By.ID, "duration")
        duration.clear()
        duration.send_keys("45m")
        browser.find_element(By.ID, "comment").send_keys("disk swap on web-42")
        browser.find_element(By.CSS_SELECTOR, "#silence-form button").click()
        text = _flash(browser, "added")
        silence_id = text.split()[1]
        row = browser.find_element(By.CSS_SELECTOR, f'#silences li[data-id="{silence_id}"]')
        assert "host=web-42, level!=INFO" in row.text and "disk swap on web-42" in row.text
        event = kapacitor_event("cpu:host=web-42", "CRITICAL", tags={"host": "web-42"})
        assert bridge.post_alert("pager", event)[0] == 202
        wait_until(lambda: _states(bridge).get("cpu:host=web-42") == "silenced", message="held by the page's silence")
        assert not platform.got("cpu:host=web-42")
        browser.get(bridge.url + "/")
        browser.find_element(By.CSS_SELECTOR, f'#silences li[data-id="{silence_id}"] button.expire').click()
        _flash(browser, "expired")
        assert not browser.find_elements(By.CSS_SELECTOR, f'#silences li[data-id="{silence_id}"]')
        got = wait_until(lambda: platform.got("cpu:host=web-42"), message="released delivery")
        assert got[0].json()["level"] == "CRITICAL"

    def test_a_bad_silence_is_explained(self, browser: webdriver.Chrome, bridge: BridgeProcess) -> None:
        _sign_in(browser, bridge)
        browser.find_element(By.ID, "matchers").send_keys("host=~(")
        browser.find_element(By.ID, "comment").send_keys("x")
        browser.find_element(By.CSS_SELECTOR, "#silence-form button").click()
        assert "bad regular expression" in _flash(browser, "silence not added")

    def test_sign_out(self, browser: webdriver.Chrome, bridge: BridgeProcess) -> None:
        _sign_in(browser, bridge)
        browser.find_element(By.CSS_SELECTOR, "header form button").click()
        _flash(browser, "signed out")
        assert browser.get_cookie("oncall_session") is None
