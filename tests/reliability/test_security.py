"""Security: who may post, where the bridge listens, whom it trusts, what it never prints.

* ``/alerts`` with a token: a missing, wrong or non-Bearer credential is a 401, and
  the request path compares tokens with ``hmac.compare_digest`` (observed; its timing
  is the standard library's promise, not measured here);
* the default listen address is loopback, and a non-loopback one without a token
  is refused unless ``--insecure``;
* outbound TLS is verified: a private CA fails without ``ca_file`` and works with
  it; a certificate for another name fails even with the CA;
* bodies above ``max_body_bytes`` are 413 (declared or chunked);
* no configured secret (bridge token, routing key, API keys, integration keys,
  URL path tokens, SMTP password) appears in any log line, CLI output, error
  message, dead letter listing or ``/metrics``, even when the platform's error
  answer echoes the whole request back;
* the SQLite files are created 0600.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import ssl
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import requests

from bridge.config import default_config, from_mapping
from bridge.server import Service, check_listen, make_app
from tests.bridge.conftest import make_bridge  # noqa: F401 - the fixture, reused
from tests.bridge.harness import BridgeProcess, Receiver, Recorded, Reply, free_port, kapacitor_event

# -- a private CA and TLS receivers ----------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _issue(pki: Path, name: str, san: str) -> Tuple[Path, Path]:
    key, csr, cert, ext = (pki / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
    ext.write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.pem"), "-CAkey", str(pki / "ca.key"),
             "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and one for another name."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2", "-subj", "/CN=reliability test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    cert, key = _issue(d, "localhost", "IP:127.0.0.1,DNS:localhost")
    other_cert, other_key = _issue(d, "other", "DNS:other.example")
    return {"ca": d / "ca.pem", "cert": cert, "key": key, "other_cert": other_cert, "other_key": other_key}


class TlsReceiver:
    """HTTPS on 127.0.0.1 with the given certificate; records JSON bodies, answers 200."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.bodies: List[bytes] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                length = int(self.headers.get("Content-Length") or 0)
                owner.bodies.append(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def tls_receiver(pki: Dict[str, Path]) -> Iterator[TlsReceiver]:
    r = TlsReceiver(pki["cert"], pki["key"])
    yield r
    r.stop()


def hook_config(url: str, *, extra_target: str = "", server: str = "") -> str:
    return f"""
[server]
{server}

[delivery]
timeout = "2s"
backoff_initial = "50ms"
backoff_max = "200ms"

[[target]]
name = "hook"
type = "webhook"
url = "{url}/hook"
{extra_target}
"""


# -- who may post ------------------------------------------------------------------------------

TOKEN = "brdg-Tok3n-9f8e7d6c5b4a39281706"


class TestToken:
    """Bearer token on /alerts."""

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="missing"),
            pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong"),
            pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="longer"),
            pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, id="prefix"),
            pytest.param({"Authorization": f"Basic {TOKEN}"}, id="not-bearer"),
            pytest.param({"Authorization": TOKEN}, id="no-scheme"),
            pytest.param({"Authorization": "Bearer "}, id="empty"),
        ],
    )
    def test_wrong_credentials_are_401(self, headers: Dict[str, str], make_bridge: Callable[..., BridgeProcess]) -> None:
        """Anything but the exact Bearer token is a 401 with a WWW-Authenticate header; nothing stored."""
        platform = Receiver()
        try:
            bridge = make_bridge(hook_config(platform.url, server='token = "env:BRIDGE_TOKEN"'), env={"BRIDGE_TOKEN": TOKEN})
            resp = requests.post(
                f"{bridge.url}/alerts/hook", data=json.dumps(kapacitor_event()), headers=headers, timeout=10
            )
            assert resp.status_code == 401, resp.text
            assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
            assert TOKEN not in resp.text
            # An unauthenticated caller cannot probe target names either.
            assert requests.post(f"{bridge.url}/alerts/nope", data=b"{}", headers=headers, timeout=10).status_code == 401
            assert bridge.post_alert("hook", kapacitor_event(), token=TOKEN)[0] == 202
            platform.wait_for(1, timeout=10)
            assert len(platform.requests) == 1
        finally:
            platform.stop()

    def test_token_compared_with_compare_digest(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every presented token, wrong or right, goes through hmac.compare_digest (the standard
        library's constant-time comparison); this checks the call, not the timing."""
        calls: List[Tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(a: Any, b: Any) -> bool:
            calls.append((a, b))
            return bool(real(a, b))

        # bridge.server does ``import hmac`` and calls ``hmac.compare_digest`` per request.
        monkeypatch.setattr(hmac, "compare_digest", spy)
        config = from_mapping(
            {
                "server": {"token": TOKEN},
                "store": {"path": str(tmp_path / "b.db")},
                "target": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/hook"}],
            }
        )

        async def scenario() -> List[int]:
            from aiohttp.test_utils import TestClient, TestServer

            service = Service(config)
            await asyncio.get_running_loop().run_in_executor(None, service.start)
            try:
                async with TestClient(TestServer(make_app(service))) as client:
                    statuses = []
                    for value in ("Bearer nope", f"Bearer {TOKEN}"):
                        resp = await client.post(
                            "/alerts/hook", data=json.dumps(kapacitor_event()), headers={"Authorization": value}
                        )
                        statuses.append(resp.status)
                    return statuses
            finally:
                await asyncio.get_running_loop().run_in_executor(None, service.stop, 2.0)

        assert asyncio.run(scenario()) == [401, 202]
        presented = [bytes(a) for a, _ in calls]
        assert b"nope" in presented and TOKEN.encode() in presented, calls


# -- where it listens ----------------------------------------------------------------------------


class TestListen:
    """Loopback by default; an open listener needs a token or --insecure."""

    def test_default_listen_is_loopback(self, tmp_path: Path) -> None:
        """No [server] table: 127.0.0.1:9095, and check-config shows it."""
        assert default_config().server.listen == "127.0.0.1:9095"
        assert from_mapping({}).server.is_loopback
        config = tmp_path / "c.toml"
        config.write_text(f'[store]\npath = "{tmp_path / "x.db"}"\n')
        out = subprocess.run(
            [*_bridge_cmd(), "check-config", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert "127.0.0.1:9095" in out.stdout

    @pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "[::]"])
    def test_open_listener_without_token_refused(self, host: str, tmp_path: Path) -> None:
        """serve exits non-zero naming server.listen and --insecure, without ever binding."""
        port = free_port()
        config = tmp_path / "c.toml"
        config.write_text(f'[server]\nlisten = "{host}:{port}"\n[store]\npath = "{tmp_path / "x.db"}"\n')
        out = subprocess.run(
            [*_bridge_cmd(), "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
        assert out.returncode != 0
        assert "server.listen" in out.stderr and "--insecure" in out.stderr, out.stderr
        assert not (tmp_path / "x.db").exists(), "the store was opened before the listen check"
        check = subprocess.run(
            [*_bridge_cmd(), "check-config", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
        # check-config refuses it exactly as serve does: same exit code, same message.
        assert check.returncode == out.returncode == 2, check
        refusal = [ln for ln in out.stderr.splitlines() if "config error: server.listen" in ln]
        assert refusal and refusal[-1] in check.stderr.splitlines(), (out.stderr, check.stderr)

    def test_insecure_flag_and_token_allow_open_listener(self) -> None:
        """With --insecure, or with a token, a non-loopback address passes the check."""
        open_no_token = from_mapping({"server": {"listen": "0.0.0.0:9095"}})
        with pytest.raises(Exception, match="insecure"):
            check_listen(open_no_token, insecure=False)
        check_listen(open_no_token, insecure=True)
        check_listen(from_mapping({"server": {"listen": "0.0.0.0:9095", "token": TOKEN}}), insecure=False)
        check_listen(from_mapping({"server": {"listen": "[::1]:9095"}}), insecure=False)
        assert "--insecure" in subprocess.run(
            [*_bridge_cmd(), "serve", "--help"], capture_output=True, text=True, timeout=30
        ).stdout


def _bridge_cmd() -> List[str]:
    from tests.bridge.harness import bridge_command

    return bridge_command()


# -- whom it trusts ---------------------------------------------------------------------------------


class TestOutboundTls:
    """Certificates of platforms are verified; ca_file adds a private CA."""

    def test_private_ca_needs_ca_file(self, tls_receiver: TlsReceiver, pki: Dict[str, Path], make_bridge: Callable[..., BridgeProcess]) -> None:
        """Without ca_file the delivery fails on the certificate and stays queued; with it, it arrives."""
        bridge = make_bridge(hook_config(tls_receiver.url))
        test = bridge.cli("send-test", "--target", "hook")
        assert test.returncode != 0 and "certif" in (test.stdout + test.stderr).lower(), test
        assert bridge.post_alert("hook", kapacitor_event("tls:a"))[0] == 202
        bridge.wait_until(lambda: "certif" in bridge.log_text().lower(), timeout=10, message="a TLS error logged")
        assert tls_receiver.bodies == []
        assert bridge.healthz()[1]["queue"]["pending"] + bridge.healthz()[1]["queue"]["inflight"] == 1
        bridge.stop()

        trusted = make_bridge(hook_config(tls_receiver.url, extra_target=f'ca_file = "{pki["ca"]}"'))
        test = trusted.cli("send-test", "--target", "hook")
        assert test.returncode == 0 and "200" in test.stdout, test
        assert trusted.post_alert("hook", kapacitor_event("tls:b"))[0] == 202
        trusted.wait_until(lambda: any(b"tls:b" in b for b in tls_receiver.bodies), timeout=10, message="delivered")

    def test_hostname_still_checked_with_ca_file(self, pki: Dict[str, Path], make_bridge: Callable[..., BridgeProcess]) -> None:
        """A certificate from the trusted CA but for another name is refused."""
        wrong = TlsReceiver(pki["other_cert"], pki["other_key"])
        try:
            bridge = make_bridge(hook_config(wrong.url, extra_target=f'ca_file = "{pki["ca"]}"'))
            test = bridge.cli("send-test", "--target", "hook")
            assert test.returncode != 0, test
            assert wrong.bodies == []
        finally:
            wrong.stop()

    def test_ca_file_must_exist(self, tmp_path: Path) -> None:
        """A ca_file that cannot be read is a config error naming the key."""
        config = tmp_path / "c.toml"
        config.write_text(hook_config("https://127.0.0.1:9", extra_target=f'ca_file = "{tmp_path / "none.pem"}"'))
        out = subprocess.run([*_bridge_cmd(), "check-config", "--config", str(config)], capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and "ca_file" in out.stderr, out


# -- how much it reads ------------------------------------------------------------------------------


class TestBodyCap:
    """max_body_bytes is enforced however the body arrives."""

    def test_oversize_bodies_are_413(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """Declared and chunked bodies above the cap get 413; one under it is accepted."""
        platform = Receiver()
        try:
            bridge = make_bridge(hook_config(platform.url, server="max_body_bytes = 2048"))
            big = json.dumps(kapacitor_event(details="d" * 4000)).encode()
            assert bridge.post_alert("hook", big)[0] == 413
            chunked = requests.post(
                f"{bridge.url}/alerts/hook", data=iter([big[:1000], big[1000:]]), timeout=10,
                headers={"Content-Type": "application/json"},
            )
            assert chunked.status_code == 413, chunked.text
            huge = requests.post(
                f"{bridge.url}/alerts/hook", data=iter([b" " * 65536] * 160), timeout=30,
                headers={"Content-Type": "application/json"},
            )
            assert huge.status_code == 413
            small = json.dumps(kapacitor_event(details="d" * 1000)).encode()
            assert len(small) < 2048 and bridge.post_alert("hook", small)[0] == 202
            assert bridge.running
        finally:
            platform.stop()


# -- what it never prints ------------------------------------------------------------------------------

SECRETS = {
    "token": "brdg-Tok3n-1a2b3c4d5e6f7a8b9c0d",
    "routing_key": "R0uting0key1234567890abcdef01234",
    "opsgenie": "0psg3nie-ap1k-4444-8888-abcdef123456",
    "ilert": "il-1nt3gr4tion-k3y-777777",
    "oncall_path": "OnCaLLp4thT0ken9876543210",
    "squadcast_path": "sq8dc4stT0kenABCDEF123456",
    "splunk_api": "spl8nkAPIk3y-0000-1111-2222",
    "splunk_routing": "spl8nkR0uting",
    "header": "h3ader-Secr3t-55555555",
    "smtp_password": "Sm7p-P4ssw0rd-zzzz",
}


def _echo(rec: Recorded) -> Reply:
    """A platform whose error answer repeats the request: path, headers and body."""
    text = json.dumps({"error": "rejected", "path": rec.path, "headers": dict(rec.headers), "body": rec.body.decode("utf-8", "replace")})
    status = 500 if len(rec.body) % 2 else 400
    return Reply(status, text, {"Content-Type": "application/json"})


class _FailingSmtp:
    """aiosmtpd with STARTTLS (our CA) that refuses every login."""

    def __init__(self, pki: Dict[str, Path]) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(pki["cert"]), str(pki["key"]))

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                return "250 OK"

        def refuse(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            return AuthResult(success=False, handled=False)

        self.port = free_port()
        self.controller = Controller(
            Handler(), hostname="127.0.0.1", port=self.port, tls_context=context, require_starttls=True,
            authenticator=refuse, auth_require_tls=True,
        )
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


def _secret_forms(secrets: Dict[str, str]) -> Dict[str, str]:
    forms = dict(secrets)
    user, password = "alerts@example.com", secrets["smtp_password"]
    forms["smtp_plain_b64"] = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    forms["smtp_login_b64"] = base64.b64encode(password.encode()).decode()
    return forms


class TestNoSecretLeaks:
    """Every configured secret stays out of everything the bridge says."""

    def test_secrets_never_printed(self, tmp_path: Path, pki: Dict[str, Path], make_bridge: Callable[..., BridgeProcess]) -> None:
        """Logs, CLI output, HTTP answers, dead letters and /metrics are grepped for every secret."""
        echo = Receiver(handler=_echo)
        smtp = _FailingSmtp(pki)
        (tmp_path / "routing_key").write_text(SECRETS["routing_key"] + "\n")
        base = echo.url
        s = SECRETS
        config = f"""
[server]
token = "env:BRIDGE_TOKEN"

[delivery]
timeout = "2s"
backoff_initial = "50ms"
backoff_max = "100ms"
max_age = "3s"

[[target]]
name = "pd"
type = "pagerduty"
routing_key = "file:{tmp_path / 'routing_key'}"
url = "{base}/v2/enqueue"

[[target]]
name = "og"
type = "opsgenie"
api_key = "env:OPSGENIE_KEY"
url = "{base}"

[[target]]
name = "il"
type = "ilert"
integration_key = "{s['ilert']}"
url = "{base}/api/events"

[[target]]
name = "oncall"
type = "grafana-oncall"
url = "{base}/integrations/v1/kapacitor/{s['oncall_path']}/"

[[target]]
name = "sq"
type = "squadcast"
url = "{base}/v2/incidents/api/{s['squadcast_path']}"

[[target]]
name = "vo"
type = "splunk-oncall"
url = "{base}/integrations/generic/20131114/alert/{s['splunk_api']}/{s['splunk_routing']}"

[[target]]
name = "hook"
type = "webhook"
url = "{base}/hook"
headers = {{ "X-Api-Key" = "{s['header']}" }}

[[target]]
name = "mail"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
tls = "starttls"
from = "alerts@example.com"
to = "oncall@example.com"
username = "alerts@example.com"
password = "env:SMTP_PASSWORD"
ca_file = "{pki['ca']}"
"""
        env = {"BRIDGE_TOKEN": s["token"], "OPSGENIE_KEY": s["opsgenie"], "SMTP_PASSWORD": s["smtp_password"]}
        captured: List[Tuple[str, str]] = []
        try:
            bridge = make_bridge(config, env=env)
            bridge.token = s["token"]
            targets = ["pd", "og", "il", "oncall", "sq", "vo", "hook", "mail"]
            for name in targets:
                for level in ("CRITICAL", "OK"):
                    status, body = bridge.post_alert(name, kapacitor_event(f"leak:{name}", level))
                    assert status == 202, (name, status, body)
            # The bridge's own error answers.
            for headers, path, data in [
                ({"Authorization": "Bearer " + s["token"][:-2]}, "/alerts/pd", b"{}"),
                ({"Authorization": "Bearer " + s["token"]}, "/alerts/unknown", b"{}"),
                ({"Authorization": "Bearer " + s["token"]}, "/alerts/pd", b"{not json"),
                ({"Authorization": "Bearer " + s["token"]}, "/alerts/pd", b"x" * 2_000_000),
            ]:
                resp = requests.post(bridge.url + path, data=data, headers=headers, timeout=10)
                captured.append((f"HTTP {path} {resp.status_code}", resp.text))
            # Every target fails (echoing the request) until max_age: all become dead letters.
            bridge.wait_until(
                lambda: (bridge.healthz()[1]["queue"]["dead"] or 0) >= len(targets), timeout=30, message="dead letters"
            )
            assert echo.requests, "the platforms were never called"
            assert any(s["routing_key"].encode() in r.body for r in echo.requests), "test broken: secret not sent"
            captured.append(("/metrics", bridge.metrics_text()))
            captured.append(("/healthz", bridge.get("/healthz").text))
            for args in (
                ("check-config",),
                ("queue",),
                ("queue", "--dead"),
                ("queue", "--dead", "--json"),
                *(("send-test", "--target", t) for t in targets),
                ("send-test", "--target", "mail", "--level", "OK"),
                ("replay", "--target", "pd"),
                ("check-config", "--log-level", "debug"),
            ):
                out = bridge.cli(*args, env=env)
                captured.append((" ".join(args), out.stdout + out.stderr))
            bridge.stop()
            captured.append(("bridge log", bridge.log_text()))
            # Config errors that involve a secret-bearing value.
            for name, text in _broken_configs(tmp_path, base).items():
                broken = tmp_path / f"{name}.toml"
                broken.write_text(text)
                out = subprocess.run([*_bridge_cmd(), "check-config", "--config", str(broken)], capture_output=True,
                                     text=True, timeout=30, env={**os.environ, **env})
                assert out.returncode != 0, (name, out.stdout)
                captured.append((f"config error {name}", out.stdout + out.stderr))
        finally:
            echo.stop()
            smtp.stop()
        leaks = [
            f"{secret_name} in {where}: …{text[max(0, text.find(value) - 80): text.find(value) + 40]!r}…"
            for where, text in captured
            for secret_name, value in _secret_forms(SECRETS).items()
            if value in text
        ]
        assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
        # The echoed secrets really went through the redactor (else this proves nothing).
        texts = dict(captured)
        assert "***" in texts["queue --dead"] and "***" in texts["send-test --target og"], texts["queue --dead"][:2000]
        assert "delivery" in texts["bridge log"] and "dead" in texts["bridge log"].lower()
        assert "535" in texts["send-test --target mail"], texts["send-test --target mail"]


def _broken_configs(tmp_path: Path, base: str) -> Dict[str, str]:
    s = SECRETS
    return {
        "bad-scheme-with-token": f'[[target]]\nname = "sq"\ntype = "squadcast"\nurl = "ftp://x/v2/incidents/api/{s["squadcast_path"]}"\n',
        "unknown-key-next-to-secret": f'[[target]]\nname = "pd"\ntype = "pagerduty"\nrouting_key = "{s["routing_key"]}"\nroutng_key = "{s["routing_key"]}"\n',
        "wrong-type-secret": f'[[target]]\nname = "og"\ntype = "opsgenie"\napi_key = "{s["opsgenie"]}"\nurl = "{base}"\nrate_limit = "{s["opsgenie"]}"\n',
        "bad-token-url": f'[[target]]\nname = "oncall"\ntype = "grafana-oncall"\nurl = "not a url {s["oncall_path"]}"\n',
    }


# -- file permissions ------------------------------------------------------------------------------------


class TestStorePermissions:
    """The outbox holds alert bodies and error answers: only the bridge's user may read it."""

    @pytest.mark.parametrize("umask", [0o022, 0o000])
    def test_store_files_are_0600(self, umask: int, make_bridge: Callable[..., BridgeProcess]) -> None:
        """The database, WAL and shared-memory files are created 0600 whatever the umask."""
        platform = Receiver(default=500)
        try:
            bridge = make_bridge(hook_config(platform.url), start=False, preexec_fn=lambda: os.umask(umask))
            bridge.start()
            assert bridge.post_alert("hook", kapacitor_event())[0] == 202
            files = [bridge.db_path, Path(f"{bridge.db_path}-wal"), Path(f"{bridge.db_path}-shm")]
            for path in files:
                assert path.exists(), path
                mode = stat.S_IMODE(path.stat().st_mode)
                assert mode == 0o600, f"{path.name} is {mode:o}"
        finally:
            platform.stop()
