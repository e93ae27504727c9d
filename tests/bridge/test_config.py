"""Config parsing: defaults, durations, secrets, and errors that name the full key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict

import pytest

from bridge.config import (
    Config,
    default_config,
    from_mapping,
    load,
    parse_duration,
    parse_listen,
)
from bridge.errors import ConfigError
from bridge.event import parse
from bridge.targets.base import RateLimit


def hook(**extra: Any) -> Dict[str, Any]:
    return {"name": "hook", "type": "webhook", "url": "https://hooks.example.com/in", **extra}


def key_of(data: Dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    return info.value.key


class TestDefaults:
    def test_embedded_defaults(self) -> None:
        """No config at all means loopback:9095, a store in cwd, no targets."""
        cfg = default_config()
        assert cfg.server.listen == "127.0.0.1:9095"
        assert cfg.server.is_loopback
        assert cfg.server.token is None
        assert cfg.store.path == "kapacitor-oncall.db"
        assert cfg.delivery.timeout == 10.0 and cfg.delivery.workers == 64
        assert cfg.targets == {}

    def test_frozen(self) -> None:
        """Config values cannot be changed after load."""
        cfg = from_mapping({"target": [hook()]})
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.server.port = 1  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.targets["hook"].name = "x"  # type: ignore[misc]

    def test_full_file(self, tmp_path: Path) -> None:
        """Every documented section loads from TOML."""
        path = tmp_path / "b.toml"
        path.write_text(
            """
[server]
listen = "127.0.0.1:9100"
max_body_bytes = 65536
[store]
path = "x.db"
[delivery]
timeout = "500ms"
backoff_initial = "2s"
backoff_max = "5m"
max_age = "24h"
repeat_interval = "1h30m"
workers = 4
[[target]]
name = "hook"
type = "webhook"
url = "https://hooks.example.com/in"
rate_limit = "120/1m"
resolve_after = "30m"
timeout = "3s"
[[heartbeat]]
url = "https://oncall.example.com/integrations/v1/formatted_webhook/abc/heartbeat/"
interval = "1m"
kapacitor_url = "http://127.0.0.1:9092/"
"""
        )
        cfg = load(str(path))
        assert cfg.server.port == 9100 and cfg.server.max_body_bytes == 65536
        assert cfg.delivery.timeout == 0.5 and cfg.delivery.repeat_interval == 5400
        target = cfg.targets["hook"]
        assert target.rate_limit == RateLimit(120, 60.0)
        assert target.resolve_after == 1800 and target.timeout == 3.0
        assert cfg.heartbeats[0].name == "heartbeat-1"
        assert cfg.heartbeats[0].kapacitor_url == "http://127.0.0.1:9092"


class TestDurations:
    @pytest.mark.parametrize(
        "text,seconds",
        [("500ms", 0.5), ("10s", 10), ("5m", 300), ("24h", 86400), ("1h30m", 5400), ("2d", 172800), ("0", 0.0)],
    )
    def test_valid(self, text: Any, seconds: float) -> None:
        """Go-style durations are accepted."""
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["10", "ten seconds", "5 m", "-1s", "1h junk", True, "", "ms", 7, 7.5])
    def test_invalid(self, text: Any) -> None:
        """Anything else is an error naming the key."""
        with pytest.raises(ConfigError) as info:
            parse_duration(text, "delivery.timeout")
        assert info.value.key == "delivery.timeout"

    def test_bad_duration_in_section(self) -> None:
        """The error names the section and key."""
        assert key_of({"delivery": {"backoff_max": "soon"}}) == "delivery.backoff_max"
        assert key_of({"target": [hook(resolve_after="later")]}) == "target.hook.resolve_after"


class TestListen:
    @pytest.mark.parametrize(
        "text,host,port,loopback",
        [
            ("127.0.0.1:9095", "127.0.0.1", 9095, True),
            ("[::1]:80", "::1", 80, True),
            ("localhost:1", "localhost", 1, True),
            ("0.0.0.0:9095", "0.0.0.0", 9095, False),
            (":9095", "0.0.0.0", 9095, False),
            ("10.1.2.3:9095", "10.1.2.3", 9095, False),
        ],
    )
    def test_listen(self, text: str, host: str, port: int, loopback: bool) -> None:
        """host:port forms parse; only loopback counts as loopback."""
        assert parse_listen(text) == (host, port)
        cfg = from_mapping({"server": {"listen": text}})
        assert cfg.server.is_loopback is loopback

    @pytest.mark.parametrize("text", ["9095", "host:", "host:99999", "host:http"])
    def test_bad_listen(self, text: str) -> None:
        """A malformed listen address names server.listen."""
        assert key_of({"server": {"listen": text}}) == "server.listen"


class TestSecrets:
    def test_env_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """env:NAME is resolved at load and recorded as a secret."""
        monkeypatch.setenv("BRIDGE_TEST_TOKEN", "tok-0123456789")
        cfg = from_mapping({"server": {"token": "env:BRIDGE_TEST_TOKEN"}})
        assert cfg.server.token == "tok-0123456789"
        assert "tok-0123456789" in cfg.secrets
        assert "tok-0123456789" not in repr(cfg)

    def test_file_secret(self, tmp_path: Path) -> None:
        """file:PATH is read with the trailing newline stripped."""
        secret = tmp_path / "url"
        secret.write_text("https://oncall.example.com/integrations/v1/kapacitor/Zq8RtYu1Io2Pa3Sd4Fg5/\n")
        cfg = from_mapping({"target": [hook(url=f"file:{secret}")]})
        assert cfg.targets["hook"].target.url.endswith("Fg5/")
        assert "Zq8RtYu1Io2Pa3Sd4Fg5" in cfg.secrets

    def test_missing_env_names_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A missing variable is reported at the key that referenced it."""
        monkeypatch.delenv("NOPE_NOT_SET", raising=False)
        data = {"target": [hook(headers={"Authorization": "env:NOPE_NOT_SET"})]}
        with pytest.raises(ConfigError) as info:
            from_mapping(data)
        assert info.value.key == "target.hook.headers.Authorization"
        assert "NOPE_NOT_SET" in info.value.message

    def test_missing_file_names_key(self, tmp_path: Path) -> None:
        """An unreadable secret file names the key too."""
        assert key_of({"server": {"token": f"file:{tmp_path}/none"}}) == "server.token"

    def test_credential_keys_are_secrets(self) -> None:
        """Target URLs (and their token path segments) and auth headers count as secrets."""
        url = "https://oncall.example.com/integrations/v1/kapacitor/Zq8RtYu1Io2Pa3Sd4Fg5/"
        cfg = from_mapping(
            {"target": [hook(url=url, headers={"Authorization": "Bearer abcdef123", "Accept": "text/plain"})]}
        )
        assert url in cfg.secrets
        assert "Zq8RtYu1Io2Pa3Sd4Fg5" in cfg.secrets
        assert "Bearer abcdef123" in cfg.secrets
        assert "text/plain" not in cfg.secrets
        assert "integrations" not in cfg.secrets

    def test_error_message_never_quotes_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Even a rejected value that is a secret stays out of the message."""
        monkeypatch.setenv("BRIDGE_BAD_URL", "ftp://secret-host-zzz/token-yyyyyyyy")
        with pytest.raises(ConfigError) as info:
            from_mapping({"target": [hook(url="env:BRIDGE_BAD_URL")]})
        assert info.value.key == "target.hook.url"
        assert "secret-host-zzz" not in str(info.value)


class TestErrors:
    @pytest.mark.parametrize(
        "data,key",
        [
            ({"servr": {}}, "servr"),
            ({"server": {"tokn": "x"}}, "server.tokn"),
            ({"delivery": {"workers": 0}}, "delivery.workers"),
            ({"delivery": {"workers": "8"}}, "delivery.workers"),
            ({"delivery": {"backoff_initial": "10s", "backoff_max": "1s"}}, "delivery.backoff_max"),
            ({"server": {"token": ""}}, "server.token"),
            ({"server": {"max_body_bytes": 10}}, "server.max_body_bytes"),
            ({"store": {"path": ""}}, "store.path"),
            ({"target": [{"type": "webhook"}]}, "target[0].name"),
            ({"target": [{"name": "a b", "type": "webhook"}]}, "target[0].name"),
            ({"target": [{"name": "hook"}]}, "target.hook.type"),
            ({"target": [hook(type="nonesuch")]}, "target.hook.type"),
            ({"target": [hook(), hook()]}, "target.hook.name"),
            ({"target": [hook(url="ftp://x/y")]}, "target.hook.url"),
            ({"target": [hook(url="not a url")]}, "target.hook.url"),
            ({"target": [hook(rate_limit="lots")]}, "target.hook.rate_limit"),
            ({"target": [hook(ca_file="/nonexistent/ca.pem")]}, "target.hook.ca_file"),
            ({"target": [hook(bogus=1)]}, "target.hook.bogus"),
            ({"target": [{"name": "hook", "type": "webhook"}]}, "target.hook.url"),
            ({"heartbeat": [{"interval": "1m"}]}, "heartbeat.heartbeat-1.url"),
            ({"heartbeat": [{"url": "https://x.example/hb", "method": "PUT"}]}, "heartbeat.heartbeat-1.method"),
            ({"target": {"name": "hook"}}, "target"),
        ],
    )
    def test_error_names_key(self, data: Dict[str, Any], key: str) -> None:
        """Every mistake is reported with the dotted key to fix."""
        assert key_of(data) == key

    def test_bad_toml(self, tmp_path: Path) -> None:
        """Broken TOML is a config error, not a traceback."""
        path = tmp_path / "bad.toml"
        path.write_text("[server\nlisten=")
        with pytest.raises(ConfigError) as info:
            load(str(path))
        assert info.value.key == "config"

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is a config error."""
        with pytest.raises(ConfigError):
            load(str(tmp_path / "none.toml"))


class TestTargetPolicies:
    def test_rate_limit_default_override_off(self) -> None:
        """The type's default applies unless overridden or turned off."""
        cfg = from_mapping(
            {
                "target": [
                    {"name": "a", "type": "grafana-oncall", "url": "https://o.example/integrations/v1/kapacitor/t/"},
                    {"name": "b", "type": "grafana-oncall", "url": "https://o.example/x/", "rate_limit": "10/1s"},
                    {"name": "c", "type": "grafana-oncall", "url": "https://o.example/y/", "rate_limit": "off"},
                ]
            }
        )
        assert cfg.targets["a"].rate_limit == RateLimit(300, 300.0)
        assert cfg.targets["b"].rate_limit == RateLimit(10, 1.0)
        assert cfg.targets["c"].rate_limit is None

    def test_auto_resolve_policy(self) -> None:
        """resolve_after applies to every non-OK event; recoverable=false falls back to the default."""
        cfg: Config = from_mapping({"target": [hook(), hook(name="ttl", resolve_after="30m")]})
        crit = parse(b'{"id":"a","level":"CRITICAL","time":"2026-01-01T00:00:00Z"}')
        norec = parse(b'{"id":"a","level":"CRITICAL","time":"2026-01-01T00:00:00Z","recoverable":false}')
        ok = parse(b'{"id":"a","level":"OK","time":"2026-01-01T00:00:00Z","recoverable":false}')
        assert cfg.targets["hook"].auto_resolve_after(crit, 3600) is None
        assert cfg.targets["hook"].auto_resolve_after(norec, 3600) == 3600
        assert cfg.targets["hook"].auto_resolve_after(ok, 3600) is None
        assert cfg.targets["ttl"].auto_resolve_after(crit, 3600) == 1800
