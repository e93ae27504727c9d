"""The HTTP API of a real bridge subprocess: every answer, auth, limits, health, metrics,
and what happens when the store cannot commit or is not ours."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import stat
import subprocess
from typing import Any, Callable, Iterator

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import webhook_config
from .harness import BridgeProcess, Receiver, bridge_command, free_port, kapacitor_event

MakeBridge = Callable[..., BridgeProcess]
TOKEN = "s3cr3t-token-for-tests-0123456789"


SMALL_BODY = "\n[server]\nmax_body_bytes = 4096\n"


@pytest.fixture
def bridge(receiver: Receiver, make_bridge: MakeBridge) -> BridgeProcess:
    return make_bridge(webhook_config(receiver.url + "/hook") + SMALL_BODY)


@pytest.fixture(scope="class")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """One bridge for a class of read-only checks (starting one costs a second or two)."""
    receiver = Receiver()
    bridge = BridgeProcess(webhook_config(receiver.url + "/hook") + SMALL_BODY, tmp_path_factory.mktemp("shared"))
    bridge.start()
    yield bridge
    bridge.close()
    receiver.stop()


class TestAccept:
    def test_202_body(self, bridge: BridgeProcess) -> None:
        """202 names target, id and the durable seq."""
        status, body = bridge.post_alert("hook", kapacitor_event("cpu:host=a"))
        assert status == 202
        assert body == {"status": "accepted", "target": "hook", "id": "cpu:host=a", "seq": 1}
        assert bridge.post_alert("hook", kapacitor_event("cpu:host=b"))[1]["seq"] == 2

    def test_kapacitor_minimal_body(self, bridge: BridgeProcess) -> None:
        """Only id, level and time are required."""
        status, _ = bridge.post_alert("hook", {"id": "x", "level": "OK", "time": "2026-01-01T00:00:00.123456789Z"})
        assert status == 202


BAD_BODIES = [
    (b"{not json", "body"),
    (b"[1,2]", "body"),
    (b"\xff\xfe{}", "body"),
    (b'{"level":"CRITICAL","time":"2026-01-01T00:00:00Z"}', "id"),
    (b'{"id":42,"level":"CRITICAL","time":"2026-01-01T00:00:00Z"}', "id"),
    (b'{"id":"","level":"CRITICAL","time":"2026-01-01T00:00:00Z"}', "id"),
    (b'{"id":"a","time":"2026-01-01T00:00:00Z"}', "level"),
    (b'{"id":"a","level":"BAD","time":"2026-01-01T00:00:00Z"}', "level"),
    (b'{"id":"a","level":"CRITICAL"}', "time"),
    (b'{"id":"a","level":"CRITICAL","time":"yesterday"}', "time"),
    (b'{"id":"a","level":"CRITICAL","time":"2026-01-01T00:00:00"}', "time"),
    (b'{"id":"a","level":"CRITICAL","time":"2026-01-01T00:00:00Z","duration":"1s"}', "duration"),
    (b'{"id":"a","level":"CRITICAL","time":"2026-01-01T00:00:00Z","data":"cpu"}', "data"),
    (b'{"id":"a","level":"CRITICAL","time":"2026-01-01T00:00:00Z","previousLevel":"X"}', "previousLevel"),
    (b'{"id":"a","level":"CRITICAL","time":"2026-01-01T00:00:00Z","recoverable":"no"}', "recoverable"),
    (b'{"id":"a","level":"CRITICAL","time":"2026-01-01T00:00:00Z","message":NaN}', "body"),
]


class TestRejections:
    @pytest.mark.parametrize("body,field", BAD_BODIES)
    def test_400_names_field(self, shared: BridgeProcess, body: bytes, field: str) -> None:
        """Malformed events are refused with a message naming the field, and never stored."""
        status, answer = shared.post_alert("hook", body)
        assert status == 400
        assert answer["field"] == field and answer["error"].startswith(field)
        assert shared.healthz()[1]["queue"]["pending"] == 0

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        body=st.one_of(
            st.binary(max_size=300),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                max_leaves=20,
            ).map(lambda v: json.dumps(v).encode()),
        )
    )
    def test_garbage_never_5xx(self, shared: BridgeProcess, body: bytes) -> None:
        """Arbitrary bytes or JSON get a 4xx with a message, never a server error."""
        status, answer = shared.post_alert("hook", body)
        assert status == 400 and answer["field"], answer

    def test_deep_nesting(self, shared: BridgeProcess) -> None:
        """Pathologically nested JSON is a 400, not a crash."""
        status, answer = shared.post_alert("hook", b"[" * 2000 + b"]" * 2000)
        assert status == 400 and answer["field"] == "body"

    def test_nothing_invalid_stored(self, shared: BridgeProcess) -> None:
        """After all the rejections the store holds no row."""
        result = shared.cli("queue", "--json")
        assert result.returncode == 0, result.stderr
        assert all(v == 0 for states in json.loads(result.stdout).values() for v in states.values())

    def test_404_unknown_target(self, shared: BridgeProcess) -> None:
        """An unknown target is 404 and lists the known ones."""
        status, answer = shared.post_alert("nope", kapacitor_event())
        assert status == 404 and answer["known"] == ["hook"]
        assert shared.metric("oncall_alerts_received_total", {"target": "", "outcome": "unknown_target"}) == 1

    def test_413_content_length(self, shared: BridgeProcess) -> None:
        """A body over max_body_bytes is refused before it is read."""
        status, answer = shared.post_alert("hook", kapacitor_event(details="x" * 5000))
        assert status == 413 and "max_body_bytes" in answer["error"]

    def test_413_chunked(self, shared: BridgeProcess) -> None:
        """A chunked body without Content-Length is capped too."""
        chunks = iter([b'{"id":"a","details":"', b"x" * 3000, b"x" * 3000, b'"}'])
        resp = requests.post(shared.url + "/alerts/hook", data=chunks, timeout=10)
        assert resp.status_code == 413

    def test_405_wrong_method(self, shared: BridgeProcess) -> None:
        """Only POST is routed for alerts; the answer is JSON and names what is allowed."""
        resp = shared.get("/alerts/hook")
        assert resp.status_code == 405 and resp.headers["Allow"] == "POST"
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.json() == {"status": "error", "error": "method GET not allowed on /alerts/hook (allowed: POST)"}

    @pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/alerts"), ("GET", "/alerts/hook/x"), ("DELETE", "/x")])
    def test_unknown_path_is_json(self, shared: BridgeProcess, method: str, path: str) -> None:
        """Every error answer is JSON, including paths nobody routes."""
        resp = requests.request(method, shared.url + path, timeout=10)
        assert resp.status_code == 404
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.json() == {"status": "error", "error": f"no such path: {path}"}


class TestRejectionLog:
    def test_each_refusal_logged(self, make_bridge: MakeBridge, receiver: Receiver) -> None:
        """400, 401, 404, 405 and 413 each leave one line with status, reason, target and remote address,
        and never the credential that was sent."""
        config = webhook_config(receiver.url + "/hook") + SMALL_BODY.replace("[server]", '[server]\ntoken = "env:BRIDGE_TOKEN"')
        bridge = make_bridge(config, env={"BRIDGE_TOKEN": TOKEN})
        wrong = "Wr0ngT0kenWr0ngT0ken"
        assert bridge.post_alert("hook", kapacitor_event(), token=wrong)[0] == 401
        assert bridge.post_alert("hook", kapacitor_event(), headers={"Authorization": f"Basic {wrong}"})[0] == 401
        assert bridge.post_alert("nope", kapacitor_event(), token=TOKEN)[0] == 404
        assert bridge.post_alert("hook", kapacitor_event(details="x" * 5000), token=TOKEN)[0] == 413
        assert bridge.post_alert("hook", b"{}", token=TOKEN)[0] == 400
        assert bridge.get("/alerts/hook").status_code == 405
        lines = bridge.wait_until(lambda: len(bridge.events("request.rejected")) >= 6 and bridge.events("request.rejected"))
        got = [(e["status"], e.get("target"), e.get("auth")) for e in lines]
        assert got == [
            (401, "hook", "wrong token"),
            (401, "hook", "not a bearer token"),
            (404, "nope", None),
            (413, "hook", None),
            (400, "hook", None),
            (405, None, None),
        ]
        assert all(e["remote"] == "127.0.0.1" and e["reason"] for e in lines)
        assert lines[2]["reason"] == "unknown target 'nope'" and lines[3]["reason"].startswith("body larger than")
        assert lines[4]["reason"] == lines[4]["reason"].strip() and lines[4]["path"] == "/alerts/hook"
        assert wrong not in bridge.log_text() and TOKEN not in bridge.log_text()

    def test_rate_limited(self, make_bridge: MakeBridge, receiver: Receiver) -> None:
        """A task posting to a wrong target in a loop writes at most a burst of lines, not one per post."""
        from bridge.rejections import BURST

        bridge = make_bridge(webhook_config(receiver.url + "/hook"))
        for _ in range(BURST + 15):
            assert bridge.post_alert("nope", kapacitor_event())[0] == 404
        assert bridge.post_alert("hook", b"{}")[0] == 400  # another status has its own budget
        bridge.wait_until(lambda: any(e["status"] == 400 for e in bridge.events("request.rejected")))
        statuses = [e["status"] for e in bridge.events("request.rejected")]
        assert statuses.count(404) == BURST and statuses.count(400) == 1


@pytest.fixture(scope="class")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """A bridge that requires the bearer token from $BRIDGE_TOKEN."""
    receiver = Receiver()
    config = webhook_config(receiver.url + "/hook") + '\n[server]\ntoken = "env:BRIDGE_TOKEN"\n'
    bridge = BridgeProcess(config, tmp_path_factory.mktemp("secured"), env={"BRIDGE_TOKEN": TOKEN})
    bridge.start()
    yield bridge
    bridge.close()
    receiver.stop()


class TestAuth:
    @pytest.mark.parametrize(
        "header",
        [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", ""],
    )
    def test_401(self, secured: BridgeProcess, header: Any) -> None:
        """Missing or wrong credentials are 401, before the target is even looked up."""
        headers = {} if header is None else {"Authorization": header}
        for target in ("hook", "unknown"):
            status, answer = secured.post_alert(target, kapacitor_event(), headers=headers)
            assert status == 401, (header, answer)
            assert "known" not in answer

    def test_right_token(self, secured: BridgeProcess) -> None:
        """The configured bearer token is accepted."""
        assert secured.post_alert("hook", kapacitor_event(), token=TOKEN)[0] == 202

    def test_open_listener_needs_token(self, tmp_path: Any, receiver: Receiver) -> None:
        """A non-loopback listen address without a token refuses to start."""
        config = tmp_path / "b.toml"
        config.write_text(f'[server]\nlisten = "0.0.0.0:{free_port()}"\n[store]\npath = "{tmp_path}/b.db"\n')
        result = subprocess.run(
            [*bridge_command(), "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2
        assert "server.listen" in result.stderr and "--insecure" in result.stderr

    def test_insecure_flag(self, make_bridge: MakeBridge) -> None:
        """--insecure lets the operator open it anyway (and says so in the log)."""
        port = free_port()
        bridge = make_bridge(f'[server]\nlisten = "0.0.0.0:{port}"\n', args=["--insecure"])
        assert bridge.events("server.insecure")


class TestHealthAndMetrics:
    def test_healthz(self, bridge: BridgeProcess, receiver: Receiver) -> None:
        """healthz reports store, workers and queue depth/age."""
        receiver.set_default(503)
        bridge.post_alert("hook", kapacitor_event())
        status, body = bridge.healthz()
        assert status == 200 and body["status"] == "ok"
        assert body["store"]["writable"] is True
        assert body["workers"]["alive"] == body["workers"]["expected"] == 2  # dispatcher + delivery loop
        bridge.wait_until(lambda: (bridge.healthz()[1]["queue"]["oldest_pending_age_seconds"] or 0) > 0.2)
        snapshot = bridge.healthz()[1]
        assert snapshot["queue"]["pending"] + snapshot["queue"]["inflight"] == 1
        assert snapshot["targets"]["hook"]["pending"] + snapshot["targets"]["hook"]["inflight"] == 1

    def test_metrics_names(self, bridge: BridgeProcess, receiver: Receiver) -> None:
        """Every documented metric is exported in Prometheus text format."""
        bridge.post_alert("hook", kapacitor_event())
        bridge.post_alert("hook", b"{}")
        receiver.wait_for(1)
        bridge.wait_until(lambda: bridge.metric("oncall_deliveries_total", {"outcome": "delivered"}) == 1)
        text = bridge.metrics_text()
        for name in (
            'oncall_alerts_received_total{outcome="accepted",target="hook"} 1.0',
            'oncall_alerts_received_total{outcome="invalid",target="hook"} 1.0',
            'oncall_outbox_pending{target="hook"}',
            'oncall_outbox_dead{target="hook"} 0.0',
            "oncall_outbox_oldest_age_seconds",
            "oncall_delivery_seconds_bucket",
            "oncall_accept_seconds_bucket",
            "oncall_accept_seconds_count 1.0",
        ):
            assert name in text, name
        assert bridge.get("/metrics").headers["Content-Type"].startswith("text/plain")


class TestStore:
    def test_db_file_private(self, bridge: BridgeProcess) -> None:
        """The SQLite file (and its WAL) are created with mode 0600."""
        bridge.post_alert("hook", kapacitor_event())
        for suffix in ("", "-wal"):
            path = f"{bridge.db_path}{suffix}"
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path

    def test_503_when_store_cannot_commit(self, bridge: BridgeProcess, receiver: Receiver) -> None:
        """With the file size limit hit, /alerts answers 503 (never 202), then recovers."""
        assert bridge.proc is not None
        pid = bridge.proc.pid
        sizes = [os.path.getsize(f"{bridge.db_path}{s}") for s in ("", "-wal") if os.path.exists(f"{bridge.db_path}{s}")]
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (max(sizes) + 512, resource.RLIM_INFINITY))
        try:
            refused = 0
            for i in range(20):
                status, answer = bridge.post_alert("hook", kapacitor_event(f"big{i}", details="y" * 3000))
                assert status in (202, 503)
                if status == 503:
                    refused += 1
                    assert "NOT stored" in answer["error"]
            assert refused > 0
            assert bridge.metric("oncall_alerts_received_total", {"target": "hook", "outcome": "store_error"}) == refused
            health_status, health = bridge.healthz()
            assert health_status == 503 and health["store"]["writable"] is False
            accepted = 20 - refused
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert bridge.post_alert("hook", kapacitor_event("after"))[0] == 202
        bridge.wait_until(lambda: bridge.healthz()[0] == 200, timeout=5)
        receiver.wait_for(accepted + 1)
        assert sorted(r.json()["id"] for r in receiver.requests) == sorted(
            [f"big{i}" for i in range(accepted)] + ["after"]
        )
        assert bridge.events("alert.store_failed")

    @pytest.mark.parametrize("content,message", [(b"garbage" * 1000, "not a kapacitor-oncall store"), (None, "another application")])
    def test_bad_store_file_exits(self, make_bridge: MakeBridge, content: Any, message: str) -> None:
        """A corrupt or foreign database file stops startup with a clear error and exit 3."""
        bridge = make_bridge("", start=False)
        if content is None:
            conn = sqlite3.connect(bridge.db_path)
            conn.execute("CREATE TABLE grafana (x)")
            conn.commit()
            conn.close()
        else:
            bridge.db_path.write_bytes(content)
        bridge.start(wait=False)
        assert bridge.proc is not None
        assert bridge.proc.wait(30) == 3
        failures = bridge.events("store.unusable")
        assert failures and message in failures[0]["error"]


class TestShutdown:
    def test_sigterm_exit_zero(self, bridge: BridgeProcess) -> None:
        """SIGTERM drains and exits 0; the port is closed afterwards."""
        bridge.post_alert("hook", kapacitor_event())
        assert bridge.stop() == 0
        with pytest.raises(requests.ConnectionError):
            requests.post(bridge.url + "/alerts/hook", data=b"{}", timeout=2)
        names = [e["event"] for e in bridge.logs()]
        assert names.index("bridge.stopping") < names.index("bridge.stopped")

