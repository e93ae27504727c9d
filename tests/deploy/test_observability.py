"""The observability kit in deploy/: alerting rules checked and unit-tested by a real promtool,
and a Grafana dashboard that only queries metrics a running bridge exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Set

import yaml

from tests.bridge.conftest import webhook_config
from tests.bridge.harness import BridgeProcess, Receiver, kapacitor_event, wait_until

from .promql import metric_names

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "kapacitor-oncall-bridge.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "kapacitor-oncall-bridge.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "kapacitor-oncall-bridge.json"

#: What the issue asks the rules to cover, by alert name.
REQUIRED_ALERTS = {
    "OncallBridgeDown",
    "OncallBridgeStoreNotWritable",
    "OncallBridgeDeliveryStuck",
    "OncallBridgeDeadLetters",
    "OncallBridgeHeartbeatFailing",
}
#: Series Prometheus itself makes for every scrape target (only the rules may use them).
SCRAPE_SERIES = {"up"}


def _run(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False)


def _rules() -> Dict[str, Dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and "query" in value:
                yield from _label_values(value["query"])
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def _label_values(query: str) -> Iterator[str]:
    """``label_values(<selector>, label)`` reads the selector's metric."""
    match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
    assert match, f"unexpected variable query {query!r}"
    yield match.group(1)


def exported_names(metrics_text: str) -> Set[str]:
    """Every series name /metrics can carry, from its ``# TYPE`` lines (so label sets not yet
    used still count), with the suffixes each type adds."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "untyped": ("",),
    }
    names: Set[str] = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind == "counter":  # the 0.0.4 text format names counters with their _total
                name = name.removesuffix("_total")
            names.update(name + suffix for suffix in suffixes[kind])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


class TestPromtool:
    def test_rules_pass_promtool_check(self, promtool: Path) -> None:
        """promtool accepts the rules file (syntax, templates, durations)."""
        result = _run(promtool, "check", "rules", RULES, cwd=RULES.parent)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(_rules())} rules found" in result.stdout + result.stderr

    def test_promtool_rejects_a_broken_rule(self, promtool: Path, tmp_path: Path) -> None:
        """The check is real: a rule with bad PromQL fails it."""
        broken = tmp_path / "broken.yml"
        broken.write_text(RULES.read_text().replace("> 300", "> > 300"))
        result = _run(promtool, "check", "rules", broken, cwd=tmp_path)
        assert result.returncode != 0
        assert "parse error" in (result.stdout + result.stderr)

    def test_rule_unit_tests_pass(self, promtool: Path) -> None:
        """Each alert fires on its condition after its ``for`` and stays quiet otherwise."""
        result = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr

    def test_every_alert_is_unit_tested(self) -> None:
        """The required alerts exist and each has a firing and a quiet case in the test file."""
        assert REQUIRED_ALERTS <= set(_rules())
        doc = yaml.safe_load(RULE_TESTS.read_text())
        fired: Set[str] = set()
        quiet: Set[str] = set()
        for case in doc["tests"]:
            for check in case["alert_rule_test"]:
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
        assert fired == set(_rules()) and quiet == set(_rules())


class TestMetricNames:
    def test_promql_lexer(self) -> None:
        """The helper finds metric names and nothing else (labels, functions, keywords)."""
        expr = (
            'histogram_quantile(0.95, sum by (le, target) (rate(a_bucket{job="$job",x=~"y|z"}[$__rate_interval])))'
            ' / on (job) group_left b_total unless absent(c{d="e"}) > 0 and ignoring(f) g offset 5m'
        )
        assert metric_names(expr) == {"a_bucket", "b_total", "c", "g"}

    def test_dashboard_and_rules_use_only_exported_metrics(
        self, make_bridge: Any, receiver: Receiver
    ) -> None:
        """Every metric the dashboard and the rules query is on a live bridge's /metrics."""
        config = webhook_config(receiver.url + "/hook") + (
            '\n[[heartbeat]]\nname = "dms"\nurl = "' + receiver.url + '/beat"\ninterval = "1s"\n'
        )
        bridge: BridgeProcess = make_bridge(config)
        assert bridge.post_alert("hook", kapacitor_event())[0] == 202
        wait_until(lambda: [r for r in receiver.requests if r.path == "/hook"], message="delivery")
        wait_until(lambda: [r for r in receiver.requests if r.path == "/beat"], message="heartbeat")
        exported = exported_names(bridge.metrics_text())
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = list(_dashboard_exprs(dashboard))
        assert len(exprs) >= 10
        used = set().union(*(metric_names(e) for e in exprs))
        assert used and used <= exported, f"dashboard queries metrics the bridge does not export: {used - exported}"
        rule_used = set().union(*(metric_names(r["expr"]) for r in _rules().values()))
        assert rule_used - SCRAPE_SERIES <= exported, f"rules read unknown metrics: {rule_used - exported}"

    def test_exported_names_come_from_type_lines(self) -> None:
        """A labelled counter with no sample yet still counts as exported."""
        text = "# HELP x_total X.\n# TYPE x_total counter\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n"
        assert {"x_total", "h_bucket", "h_sum", "h_count"} <= exported_names(text)
        assert "x" not in exported_names(text)
