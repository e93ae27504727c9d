"""The command line: check-config, send-test, queue, replay, serve without a config,
and the promise that no configured secret is ever printed or logged."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
import requests
import structlog

from bridge.cli import main
from bridge.outbox import Outbox

from .conftest import webhook_config
from .harness import REPO, BridgeProcess, Receiver, Reply, bridge_command, kapacitor_event

MakeBridge = Callable[..., BridgeProcess]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """In-process ``main()`` configures structlog and stdlib logging; undo it afterwards."""
    hook = threading.excepthook
    handlers = list(logging.getLogger().handlers)
    level = logging.getLogger().level
    yield
    structlog.reset_defaults()
    threading.excepthook = hook
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return str(path)


class TestCheckConfig:
    def test_ok_lists_targets(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A valid config prints listen, store, delivery and every target."""
        path = write(
            tmp_path,
            webhook_config("https://hooks.example.com/in", target_extra='rate_limit = "10/1s"\nresolve_after = "30m"'),
        )
        assert main(["check-config", "--config", path]) == 0
        out = capsys.readouterr().out
        assert "config OK" in out and "127.0.0.1:9095" in out
        assert "hook" in out and "webhook" in out and "rate_limit 10/1s" in out and "resolve_after 30m" in out
        assert "hooks.example.com" not in out  # target URLs are secrets

    @pytest.mark.parametrize(
        "text,key",
        [
            ('[[target]]\nname = "hook"\ntype = "webhook"\n', "target.hook.url"),
            ('[delivery]\ntimeout = "soon"\n', "delivery.timeout"),
            ('[server]\ntoken = "env:BRIDGE_UNSET_VAR_X"\n', "server.token"),
            ('[[target]]\nname = "pd"\ntype = "no-such-type"\nurl = "https://x.example/"\n', "target.pd.type"),
            ('[[target]]\nname = "hook"\ntype = "webhook"\nurl = "https://x.example/"\nrouting = 1\n',
             "target.hook.routing"),
            ("[server\n", "config"),
        ],
    )
    def test_errors_name_key(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
    ) -> None:
        """A bad config exits 2 and names the offending key."""
        os.environ.pop("BRIDGE_UNSET_VAR_X", None)
        assert main(["check-config", "--config", write(tmp_path, text)]) == 2
        err = capsys.readouterr().err
        assert f"config error: {key}:" in err

    def test_example_config_is_valid(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """bridge.toml.example at the repo root passes check-config as shipped (secrets supplied)."""
        example = (REPO / "bridge.toml.example").read_text()
        token = tmp_path / "hook-token"
        token.write_text("Bearer example-token-123\n")
        monkeypatch.setenv("ONCALL_KAPACITOR_URL", "https://oncall.example.com/integrations/v1/kapacitor/T0k3nT0k3n/")
        monkeypatch.setenv("BRIDGE_TOKEN", "CHANGE-ME")
        path = write(tmp_path, example.replace("/etc/kapacitor-oncall/hook-token", str(token)))
        assert main(["check-config", "--config", path]) == 0
        out = capsys.readouterr().out
        assert "oncall" in out and "grafana-oncall" in out and "T0k3nT0k3n" not in out
        assert "token: set" in out


class TestSendTest:
    def test_prints_platform_answer(self, tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
        """send-test posts a synthetic event now and prints status and body."""
        receiver.script(Reply(202, '{"status":"queued"}'))
        path = write(tmp_path, webhook_config(receiver.url + "/hook"))
        assert main(["send-test", "--config", path, "--target", "hook", "--level", "ok"]) == 0
        out = capsys.readouterr().out
        assert "status: 202" in out and '{"status":"queued"}' in out
        event = receiver.requests[0].json()
        assert event["level"] == "OK" and event["id"] == "kapacitor-oncall-bridge:send-test"

    def test_refused(self, tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
        """A refusal is printed with status and body, exit 1."""
        receiver.script(Reply(401, "invalid key"))
        path = write(tmp_path, webhook_config(receiver.url + "/hook"))
        assert main(["send-test", "--config", path, "--target", "hook"]) == 1
        out = capsys.readouterr().out
        assert "FAILED (permanent): HTTP 401" in out and "invalid key" in out
        assert receiver.requests[0].json()["level"] == "CRITICAL"

    def test_unknown_target(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown --target is a usage error naming the known ones."""
        path = write(tmp_path, webhook_config("https://x.example/"))
        assert main(["send-test", "--config", path, "--target", "nope"]) == 2
        assert "known: hook" in capsys.readouterr().err


class TestQueueAndReplay:
    def _store(self, tmp_path: Path) -> str:
        db = tmp_path / "q.db"
        box = Outbox(str(db)).open()
        try:
            for key in ("a", "b", "c"):
                box.enqueue("hook", key, "CRITICAL", b"{}").result(5)
            for _ in range(2):
                head, _ = box.peek("hook", time.time() + 1)
                assert head is not None and box.claim(head)
                box.finish(head, "dead", attempts=1, error="HTTP 400: nope", status=400)
        finally:
            box.close()
        return write(tmp_path, webhook_config("https://x.example/") + f'\n[store]\npath = "{db}"\n')

    def test_queue_counts(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """queue prints rows per target and state."""
        path = self._store(tmp_path)
        assert main(["queue", "--config", path, "--json"]) == 0
        counts = json.loads(capsys.readouterr().out)
        assert counts["hook"]["pending"] == 1 and counts["hook"]["dead"] == 2
        assert main(["queue", "--config", path]) == 0
        text = capsys.readouterr().out
        assert text.splitlines()[0].split()[:3] == ["target", "pending", "inflight"]

    def test_dead_listing_and_replay_by_id(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """queue --dead shows the last error; replay --id moves only that id back."""
        path = self._store(tmp_path)
        assert main(["queue", "--config", path, "--dead"]) == 0
        out = capsys.readouterr().out
        assert "id='a'" in out and "status=400" in out and "HTTP 400: nope" in out
        assert main(["replay", "--config", path, "--id", "a"]) == 0
        assert "replayed 1" in capsys.readouterr().out
        assert main(["queue", "--config", path, "--json"]) == 0
        counts = json.loads(capsys.readouterr().out)
        assert counts["hook"]["pending"] == 2 and counts["hook"]["dead"] == 1

    def test_missing_store(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """queue on a store that does not exist says so, exit 3."""
        path = write(tmp_path, f'[store]\npath = "{tmp_path}/none.db"\n')
        assert main(["queue", "--config", path]) == 3
        assert "no such file" in capsys.readouterr().err


class TestServeWithoutConfig:
    def test_embedded_defaults(self, tmp_path: Path) -> None:
        """serve with no --config stores in cwd and answers 404 for any target (on a free port:
        the default 9095 may be taken on a shared machine; default_config() pins 9095 itself)."""
        port = free_port()
        proc = subprocess.Popen(
            [*bridge_command(), "serve", "--listen", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            up = False
            while time.monotonic() < deadline and proc.poll() is None and not up:
                try:
                    up = requests.get(f"{base}/healthz", timeout=1).status_code == 200
                except requests.RequestException:
                    time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()[1]
            assert up and (tmp_path / "kapacitor-oncall.db").exists()
            resp = requests.post(f"{base}/alerts/anything", json=kapacitor_event(), timeout=5)
            assert resp.status_code == 404
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 0
            assert "config.no_targets" in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    def test_taken_port_is_a_clear_error(self, tmp_path: Path) -> None:
        """A port already in use exits 2 naming the address."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            result = subprocess.run(
                [*bridge_command(), "serve", "--listen", f"127.0.0.1:{port}"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert result.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


    def test_bad_listen_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A malformed --listen is a usage error naming the flag, before anything starts."""
        assert main(["serve", "--listen", "localhost"]) == 2
        assert "config error: --listen: must be host:port" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestSecretsNeverPrinted:
    def test_grep_everything(self, tmp_path: Path, receiver: Receiver, make_bridge: MakeBridge) -> None:
        """Token, URL path tokens and auth headers never show in logs or CLI output."""
        token = "tok-Qw3rTy-secret-77"
        header = "Bearer hdr-secret-A1B2C3D4"
        path_token = "Zx9SecretPathToken42"
        dead_token = "DeadPortToken987654321"
        url_file = tmp_path / "url.secret"
        url_file.write_text(f"{receiver.url}/integrations/v1/kapacitor/{path_token}/\n")
        down = Receiver()
        down_port = down.port
        down.stop()
        config = f"""
[server]
token = "env:T_BRIDGE_TOKEN"
[delivery]
backoff_initial = "50ms"
backoff_max = "100ms"
[[target]]
name = "oncall"
type = "grafana-oncall"
url = "file:{url_file}"
[[target]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{down_port}/x/{dead_token}/"
headers = {{ Authorization = "env:T_HOOK_AUTH" }}
"""
        env = {"T_BRIDGE_TOKEN": token, "T_HOOK_AUTH": header}
        receiver.script(Reply(400, "rejected"), 202)
        bridge = make_bridge(config, env=env)
        bridge.token = token
        assert bridge.post_alert("oncall", kapacitor_event("a", "CRITICAL"))[0] == 202
        assert bridge.post_alert("oncall", kapacitor_event("b", "CRITICAL"))[0] == 202
        assert bridge.post_alert("hook", kapacitor_event("c", "CRITICAL"))[0] == 202
        assert bridge.post_alert("oncall", kapacitor_event("d"), token="wrong")[0] == 401
        bridge.wait_until(lambda: bridge.events("delivery.dead") and len(bridge.events("delivery.retry")) >= 2)
        outputs: List[str] = [bridge.log_text()]
        for args in (
            ("check-config",),
            ("send-test", "--target", "oncall"),
            ("send-test", "--target", "hook"),
            ("queue", "--dead"),
            ("queue",),
        ):
            result = bridge.cli(*args, env=env)
            outputs += [result.stdout, result.stderr]
        assert bridge.stop() == 0
        outputs.append(bridge.log_text())
        outputs.append(bridge.metrics_text() if bridge.running else "")
        text = "\n".join(outputs)
        assert "delivery.retry" in text and "config OK" in text and "status: 202" in text
        assert "connection failed" in text and "rejected" in text and "status=400" in text
        for secret in (token, header, "hdr-secret-A1B2C3D4", path_token, dead_token):
            assert secret not in text, secret
