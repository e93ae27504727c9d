"""deploy/topic-handler-oncall.yaml, loaded into a real kapacitord, routes topic alerts to the bridge.

The handler file is loaded the way an operator does it: ``kapacitor define-topic-handler`` (the
CLI built next to kapacitord), which parses the YAML and posts it as JSON to
``/kapacitor/v1/alerts/topics/<topic>/handlers``. Only the bridge URL and token are rewritten
for the test, line by line, like render_config does for the example config.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.bridge.harness import BridgeProcess, wait_until
from tests.e2e.kapacitord import REPO_ROOT, Kapacitord
from tests.receivers import WebhookReceiver

if TYPE_CHECKING:
    from tests.e2e.conftest import StartKapacitord

pytestmark = pytest.mark.e2e

HANDLER_FILE = REPO_ROOT / "deploy" / "topic-handler-oncall.yaml"
TOKEN = "topic-handler-token-81d0"
DBRP = ("telegraf", "autogen")
T0 = 1714564800  # 2024-05-01T12:00:00Z
ALERT_ID = "cpu:host=db-1"


def yaml_value(text: str, key: str) -> str:
    """The value of a ``key: value`` line of the handler file (it has one of each)."""
    (value,) = re.findall(rf"^\s*{re.escape(key)}:\s*(\S.*?)\s*$", text, re.M)
    return str(value)


def rewrite(text: str, url: str, token: str) -> str:
    """Point the shipped handler at the test's bridge; each rewritten line must exist once."""
    out, hits = [], {"url": 0, "Authorization": 0}
    for ln in text.splitlines():
        m = re.match(r"^(\s*)(url|Authorization):\s*\S", ln)
        if m and not ln.lstrip().startswith("#"):
            indent, key = m.groups()
            hits[key] += 1
            ln = f"{indent}{key}: " + (url if key == "url" else f"Bearer {token}")
        out.append(ln)
    assert hits == {"url": 1, "Authorization": 1}, f"{HANDLER_FILE} changed shape: {hits}"
    return "\n".join(out) + "\n"


def topic_script() -> str:
    """tick/cpu_alert.tick publishing to the topic instead of posting to the endpoint itself."""
    text = (REPO_ROOT / "tick" / "cpu_alert.tick").read_text(encoding="utf-8")
    post = re.compile(r"\.post\(\)\s*\.endpoint\('oncall-bridge'\)(\s*\.captureResponse\(\))?")
    assert len(post.findall(text)) == 1, "tick/cpu_alert.tick no longer posts to the endpoint"
    topic = yaml_value(HANDLER_FILE.read_text(encoding="utf-8"), "topic")
    return post.sub(f".topic('{topic}')", text)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def bridge(receiver: WebhookReceiver, tmp_path: Path) -> Iterator[BridgeProcess]:
    config = "\n".join([
        "[server]",
        f'token = "{TOKEN}"',
        "",
        "[[target]]",
        'name = "oncall"',
        'type = "webhook"',
        f'url = "{receiver.url}"',
        "",
    ])
    b = BridgeProcess(config, tmp_path / "bridge")
    b.start()
    yield b
    code = b.stop()
    b.close()
    assert code == 0, b.log_text()


def test_handler_file_is_what_the_docs_say() -> None:
    """The shipped file is a post handler on topic oncall aimed at the bridge's default address."""
    text = HANDLER_FILE.read_text(encoding="utf-8")
    assert yaml_value(text, "topic") == "oncall"
    assert yaml_value(text, "kind") == "post"
    assert yaml_value(text, "url") == "http://127.0.0.1:9095/alerts/oncall"
    assert yaml_value(text, "Authorization") == "Bearer CHANGE-ME"


def test_topic_alerts_reach_the_bridge(
    start_kapacitord: "StartKapacitord",
    kapacitor_bin: Path,
    bridge: BridgeProcess,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    """Loaded with the CLI, the handler posts topic events to the bridge, which opens and resolves."""
    # The example's own [[httppost]] endpoint points nowhere: only the topic handler can deliver.
    k: Kapacitord = start_kapacitord(udf_prog=None)
    handler = tmp_path / "topic-handler-oncall.yaml"
    handler.write_text(rewrite(HANDLER_FILE.read_text(encoding="utf-8"), f"{bridge.url}/alerts/oncall", TOKEN))
    cli = subprocess.run(
        [str(kapacitor_bin / "kapacitor"), "-url", k.base_url, "define-topic-handler", str(handler)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert cli.returncode == 0, cli.stderr

    # Kapacitor converted the YAML to this JSON spec and persisted it.
    r = k.session.get(k.api("/alerts/topics/oncall/handlers/oncall-bridge"), timeout=10)
    assert r.status_code == 200, r.text
    spec = r.json()
    assert (spec["id"], spec["kind"], spec["match"]) == ("oncall-bridge", "post", "")
    assert spec["options"]["url"] == f"{bridge.url}/alerts/oncall"
    assert spec["options"]["headers"] == {"Authorization": f"Bearer {TOKEN}"}
    assert spec["options"]["timeout"] == 10_000_000_000  # 10 s, in nanoseconds

    k.define_task("cpu_alert_topic", topic_script(), dbrps=[DBRP])
    k.wait_task("cpu_alert_topic", lambda t: bool(t["executing"]))
    k.write(*DBRP, [f"cpu,host=db-1 usage_user={v} {T0 + 10 * i}" for i, v in enumerate([20.0, 96.0, 97.0])])
    wait_until(lambda: receiver.incidents.get(ALERT_ID) == "open", 15, message="incident opened via topic")
    k.write(*DBRP, [f"cpu,host=db-1 usage_user=10 {T0 + 30}"])
    wait_until(lambda: receiver.incidents.get(ALERT_ID) == "resolved", 15, message="incident resolved via topic")
    time.sleep(0.2)

    bodies = [req.json() for req in receiver.requests]
    assert [(b["id"], b["level"]) for b in bodies] == [(ALERT_ID, "CRITICAL"), (ALERT_ID, "OK")]
    assert receiver.rejected == []
    events = k.topic_events("oncall")
    assert [(e["id"], e["state"]["level"]) for e in events] == [(ALERT_ID, "OK")]
    assert bridge.metric("oncall_alerts_received_total", {"target": "oncall", "outcome": "accepted"}) == 2

    # The handler spec survives a kapacitord restart (BoltDB), and keeps delivering.
    k.restart()
    assert k.session.get(k.api("/alerts/topics/oncall/handlers/oncall-bridge"), timeout=10).json()["options"] == spec["options"]
    k.wait_task("cpu_alert_topic", lambda t: bool(t["executing"]))
    k.write(*DBRP, [f"cpu,host=db-1 usage_user=99 {T0 + 40}"])
    wait_until(lambda: receiver.incidents.get(ALERT_ID) == "open", 15, message="incident re-opened after restart")
