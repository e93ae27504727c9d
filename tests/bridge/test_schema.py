"""The configuration schema: every error at once, helpful unknown-key messages, the
generated reference and the example file, all driven by the same declarations."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from bridge.cli import main
from bridge.config import TargetConfig, from_mapping, load, sections
from bridge.errors import ConfigError
from bridge.reference import reference
from bridge.schema import DURATION, INTEGER, ConfigErrors, Errors, keys_of, read_table, setting
from bridge.targets.base import registered_types
from bridge.targets.keys import TARGET_KEYS, keys_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "bridge.toml.example"

#: Values for every env: reference the example uses.
EXAMPLE_ENV = {
    "BRIDGE_TOKEN": "CHANGE-ME",
    "ONCALL_KAPACITOR_URL": "https://oncall.example.com/integrations/v1/kapacitor/T0k3nT0k3n/",
    "ONCALL_WEBHOOK_URL": "https://oncall.example.com/integrations/v1/formatted_webhook/T0k3nT0k3n/",
    "ONCALL_HEARTBEAT_URL": "https://oncall.example.com/integrations/v1/formatted_webhook/T0k3n/heartbeat/",
    "PD_ROUTING_KEY": "0123456789abcdef0123456789abcdef",
    "OPSGENIE_API_KEY": "og-key-0123456789",
    "ILERT_INTEGRATION_KEY": "il-0123456789",
    "SPLUNK_ONCALL_URL": "https://alert.victorops.com/integrations/generic/20131114/alert/k/r",
    "SQUADCAST_WEBHOOK_URL": "https://api.squadcast.com/v2/incidents/api/T0k3nT0k3n",
    "SMTP_PASSWORD": "pw-0123456789",
}


def errors_of(data: Dict[str, Any], **kw: Any) -> List[Tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        from_mapping(data, **kw)
    exc = info.value
    items = exc.errors if isinstance(exc, ConfigErrors) else (exc,)
    return [(e.key, e.message) for e in items]


def example_blocks(text: str) -> List[str]:
    """The commented ``# [[target]]``/``# [[heartbeat]]`` blocks, uncommented."""
    blocks: List[str] = []
    current: Optional[List[str]] = None
    for line in text.splitlines():
        if line.startswith("# [["):
            current = [line[2:]]
            blocks.append("")
        elif current is not None and line.startswith("# ") and not line.startswith("# ---"):
            current.append(line[2:])
        else:
            current = None
        if current is not None:
            blocks[-1] = "\n".join(current)
    return blocks


def resolved(value: Any) -> Any:
    """``env:NAME`` as the loader resolves it (for calling from_options directly)."""
    if isinstance(value, str) and value.startswith("env:"):
        return os.environ[value[4:]]
    return value


@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    token = tmp_path / "hook-token"
    token.write_text("Bearer example-token-123\n")
    return token


class TestEveryErrorAtOnce:
    def test_all_errors_reported(self) -> None:
        """Problems in different sections and targets are all reported by one load."""
        found = errors_of(
            {
                "server": {"max_body_bytes": 1},
                "delivery": {"timeout": "soon", "workers": 0},
                "target": [
                    {"name": "a", "type": "webhook"},
                    {"name": "b", "type": "pagerduty", "routing_key": "short"},
                ],
            }
        )
        keys = [k for k, _ in found]
        assert keys == [
            "server.max_body_bytes",
            "delivery.timeout",
            "delivery.workers",
            "target.a.url",
            "target.b.routing_key",
        ]

    def test_one_error_per_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An unresolved env: value is reported once, not again as a bad URL."""
        monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
        found = errors_of({"target": [{"name": "a", "type": "webhook", "url": "env:NOT_SET_ANYWHERE"}]})
        assert found == [("target.a.url", "environment variable NOT_SET_ANYWHERE is not set")]

    def test_cli_prints_each(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """check-config prints one line per error and a count, exit 2."""
        path = tmp_path / "b.toml"
        path.write_text('[delivery]\ntimeout = 10\nworkers = "8"\n[[target]]\nname = "x"\ntype = "webhook"\nurll = "https://a.example/"\n')
        assert main(["check-config", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert "config error: delivery.timeout: must be a duration string with a unit, e.g. \"10s\"" in err
        assert "config error: delivery.workers: must be an integer" in err
        assert "config error: target.x.urll: unknown key `urll` (did you mean `url`?)" in err
        assert "config error: target.x.url: is required" in err
        assert "4 errors in" in err


class TestUnknownKeys:
    def test_suggests_closest_and_lists_valid(self) -> None:
        """A typo names the closest key and every valid key of the target's type."""
        [(key, message)] = errors_of(
            {"target": [{"name": "pd", "type": "pagerduty", "routing_key": "0" * 32, "routng_key": "x"}]}
        )
        assert key == "target.pd.routng_key"
        assert message.startswith("unknown key `routng_key` (did you mean `routing_key`?)")
        valid = message.split("valid keys for type pagerduty: ", 1)[1].split(", ")
        assert valid == sorted([k.name for k in keys_of(TargetConfig)] + [k.name for k in keys_for("pagerduty")])

    def test_no_suggestion_when_nothing_is_close(self) -> None:
        """Nothing close: no guess, still the list."""
        [(_, message)] = errors_of({"store": {"zzz": 1}})
        assert message == (
            "unknown key `zzz`; valid keys for [store]: backend, dsn, keep_delivered, lease, path, pool_size, replica_id, writers"
        )

    def test_unknown_section_and_type(self) -> None:
        """Unknown top-level tables and target types get the same treatment."""
        found = dict(errors_of({"servr": {}, "target": [{"name": "a", "type": "pagerdty"}]}))
        assert found["servr"].startswith("unknown key `servr` (did you mean `server`?)")
        assert found["target.a.type"].startswith("unknown type `pagerdty` (did you mean `pagerduty`?)")


class TestRules:
    @pytest.mark.parametrize("value", [10, 2.5])
    def test_bare_number_duration(self, value: Any) -> None:
        """A duration without a unit is an error that shows the fix."""
        [(key, message)] = errors_of({"delivery": {"backoff_max": value}})
        assert key == "delivery.backoff_max" and "a bare number has no unit" in message

    def test_open_listener_without_token(self) -> None:
        """The rule serve enforces is part of strict loading, with serve's message."""
        [(key, message)] = errors_of({"server": {"listen": "0.0.0.0:9095"}}, insecure=False)
        assert key == "server.listen" and "set a token or pass --insecure" in message
        assert from_mapping({"server": {"listen": "0.0.0.0:9095"}}).server.port == 9095
        assert from_mapping({"server": {"listen": "0.0.0.0:9095", "token": "t0ken-123"}}, insecure=False)

    def test_check_config_refuses_like_serve(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """check-config fails exactly as serve refuses; --insecure accepts with a warning."""
        path = tmp_path / "b.toml"
        path.write_text('[server]\nlisten = "0.0.0.0:9095"\n')
        assert main(["check-config", "--config", str(path)]) == 2
        refused = capsys.readouterr().err
        assert "config error: server.listen: 0.0.0.0:9095 is not a loopback address and server.token is not set" in refused
        assert main(["check-config", "--insecure", "--config", str(path)]) == 0
        assert "warning: server.listen" in capsys.readouterr().err


class TestDeclarations:
    def test_target_keys_name_registered_types(self) -> None:
        """Every type a declaration names exists; every registered type is documented."""
        types = set(registered_types())
        for key in TARGET_KEYS:
            assert key.types and set(key.types) <= types, key
        for a in TARGET_KEYS:
            for b in TARGET_KEYS:
                if a is not b and a.name == b.name:
                    assert not set(a.types) & set(b.types), (a.name, a.types, b.types)

    def test_new_section_key_is_one_field(self) -> None:
        """A ``setting`` field is a key: read, defaulted and range-checked with no other code."""

        @dataclasses.dataclass(frozen=True)
        class Section:
            interval: float = setting(DURATION, "How often.", 30.0, positive=True)
            count: int = setting(INTEGER, "How many.", 3, minimum=1)

        errors = Errors()
        values = read_table({"interval": "1m", "count": 0}, "x", keys_of(Section), errors)
        assert Section(**values) == Section(interval=60.0, count=3)
        assert [(e.key, e.message) for e in errors.items] == [("x.count", "must be at least 1")]

    def test_url_list_kind(self) -> None:
        """An array of URLs names the bad element; an empty array is refused."""
        from bridge.schema import URL_LIST, Key

        key = Key("urls", URL_LIST, "Replicas.")
        assert key.read(["https://a.example/", "http://b.example:9093"], "t.urls") == (
            "https://a.example/",
            "http://b.example:9093",
        )
        for bad, where in ((["https://a.example/", "ftp://b"], "t.urls[1]"), ([], "t.urls"), ("https://a/", "t.urls")):
            with pytest.raises(ConfigError) as info:
                key.read(bad, "t.urls")
            assert info.value.key == where

    def test_sections_come_from_config(self) -> None:
        """The tables the loader reads are the Config fields declared with section()."""
        assert list(sections()) == ["server", "store", "delivery", "kapacitor"]


class TestReference:
    def test_committed_docs_are_current(self) -> None:
        """docs/configuration.md is exactly what config-reference generates (run `make docs`)."""
        assert (REPO / "docs" / "configuration.md").read_text(encoding="utf-8") == reference()

    def test_cli_prints_it(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """config-reference prints the reference, or writes it with --output."""
        assert main(["config-reference"]) == 0
        assert capsys.readouterr().out == reference()
        out = tmp_path / "ref.md"
        assert main(["config-reference", "--output", str(out)]) == 0
        assert out.read_text(encoding="utf-8") == reference()

    def test_every_key_documented(self) -> None:
        """Each section key and each type's keys appear in the reference."""
        text = reference()
        for name, cls in sections().items():
            block = text.split(f"## `[{name}]`", 1)[1].split("\n## ", 1)[0]
            for key in keys_of(cls):
                assert f"| `{key.name}` |" in block
        for type_name in registered_types():
            block = text.split(f'### `type = "{type_name}"`', 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
            for key in keys_for(type_name):
                assert f"| `{key.name}` |" in block, (type_name, key.name)


class TestExample:
    def test_loads_as_shipped(self, example_env: Path, tmp_path: Path) -> None:
        """bridge.toml.example loads (secrets supplied); the token is the one Kapacitor's files send."""
        path = tmp_path / "bridge.toml"
        path.write_text(EXAMPLE.read_text().replace("/etc/kapacitor-oncall/hook-token", str(example_env)))
        config = load(str(path), insecure=False)
        assert sorted(config.targets) == ["hook", "oncall"]
        assert config.server.token == "CHANGE-ME"

    def test_every_type_has_a_block_that_loads(self, example_env: Path) -> None:
        """Each commented block loads on its own, shows every key of its type, and every type has one."""
        text = EXAMPLE.read_text()
        blocks = example_blocks(text)
        shown = {"grafana-oncall", "webhook"}  # the active targets
        for block in blocks:
            config = from_mapping(__import__("tomllib").loads(block))
            for target in config.targets.values():
                shown.add(target.type)
                given = set(re.findall(r"^(\w+) =", block, re.M))
                assert {k.name for k in keys_for(target.type)} - {"headers", "template", "content_type"} <= given
            assert config.targets or config.heartbeats
        assert shown == set(registered_types())

    def test_declared_defaults_are_the_code_defaults(self, example_env: Path) -> None:
        """Per type, a table with only the required keys builds the same target whether the
        loader fills in the declared defaults or the type's code falls back on its own."""
        import tomllib

        from bridge.targets.base import Options, get_type

        checked = set()
        for block in example_blocks(EXAMPLE.read_text()):
            for table in tomllib.loads(block).get("target", []):
                type_name = table["type"]
                required = {k.name for k in keys_for(type_name) if k.required}
                minimal = {k: v for k, v in table.items() if k in required | {"name", "type"}}
                loaded = from_mapping({"target": [minimal]}).targets[table["name"]].target
                bare = {k: resolved(v) for k, v in minimal.items() if k not in ("name", "type")}
                own = get_type(type_name).from_options(table["name"], Options(f"target.{table['name']}", bare))
                assert own == loaded, type_name
                checked.add(type_name)
        assert len(checked) >= 9

    def test_token_agrees_with_kapacitor_files(self) -> None:
        """kapacitor.conf.example and the topic handler send the placeholder bridge.toml's token stands for."""
        assert re.search(r'^token = "env:BRIDGE_TOKEN"$', EXAMPLE.read_text(), re.M)
        conf = (REPO / "kapacitor.conf.example").read_text()
        handler = (REPO / "deploy" / "topic-handler-oncall.yaml").read_text()
        assert f'Authorization = "Bearer {EXAMPLE_ENV["BRIDGE_TOKEN"]}"' in conf
        assert f'Authorization: Bearer {EXAMPLE_ENV["BRIDGE_TOKEN"]}' in handler
        for text in (conf, handler):
            assert "BRIDGE_TOKEN" in text  # each says where the real value lives
