"""The shipped kapacitor.conf.example runs a real kapacitord, and the harness can drive it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.kapacitord import (
    BRIDGE_ENDPOINT,
    EXAMPLE_CONFIG,
    PATH_PLACEHOLDER,
    UDF_NAME,
    render_config,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import StartKapacitord

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))


@pytest.mark.e2e
def test_stream_task_round_trip(start_kapacitord: "StartKapacitord") -> None:
    """Define+enable a stream task, write 3 points via /write, read them back from httpOut.

    Three hosts because httpOut keeps only the last row per group.
    """
    k = start_kapacitord(udf_prog=None)
    k.define_task(
        "smoke",
        "stream\n  |from()\n    .measurement('cpu')\n    .groupBy('host')\n  |httpOut('out')\n",
    )
    k.wait_task("smoke", lambda t: bool(t["executing"]))
    assert k.http_out("smoke", "out") == {"series": None}

    t0 = 1714564800  # 2024-05-01T12:00:00Z
    k.write("mydb", "autogen", [f"cpu,host=a value=1.5 {t0}", f"cpu,host=b value=2.5 {t0 + 10}", f"cpu,host=c value=3i {t0 + 20}"])

    body = k.wait_http_out("smoke", "out", lambda b: len(b.get("series") or []) == 3)
    rows = {s["tags"]["host"]: (s["name"], s["columns"], s["values"]) for s in body["series"]}
    assert rows == {
        "a": ("cpu", ["time", "value"], [["2024-05-01T12:00:00Z", 1.5]]),
        "b": ("cpu", ["time", "value"], [["2024-05-01T12:00:10Z", 2.5]]),
        "c": ("cpu", ["time", "value"], [["2024-05-01T12:00:20Z", 3]]),
    }
    task = k.task("smoke")
    assert task["error"] == ""
    assert task["status"] == "enabled"


def test_example_declares_udf_and_bridge() -> None:
    """The UDF and the bridge endpoint are what TICKscripts and the bridge rely on by name."""
    conf = _example()
    udf = conf["udf"]["functions"][UDF_NAME]
    assert udf == {"prog": "kapacitor-alert-state", "args": [], "timeout": "10s"}

    (post,) = conf["httppost"]
    assert post["endpoint"] == BRIDGE_ENDPOINT
    assert post["url"] == "http://127.0.0.1:9095/alerts/oncall"
    assert post["headers"] == {"Authorization": "Bearer CHANGE-ME"}

    assert conf["http"]["bind-address"].startswith("127.0.0.1:")
    assert conf["reporting"]["enabled"] is False
    (influx,) = conf["influxdb"]
    assert influx["enabled"] is False and influx["name"] and influx["urls"]
    for path in (conf["data_dir"], conf["storage"]["boltdb"], conf["replay"]["dir"], conf["task"]["dir"]):
        assert path.startswith(PATH_PLACEHOLDER), path


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested tables to dotted keys; arrays of tables are indexed (``httppost.0.url``)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "headers":
            out.update(_leaves(value, dotted + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                out.update(_leaves(item, f"{dotted}.{i}."))
        else:
            out[dotted] = value
    return out


def test_render_changes_only_machine_specific_values(tmp_path: Path) -> None:
    """Rendering must leave the example's policy (everything but paths/ports/secrets) untouched."""
    path = render_config(
        tmp_path,
        http_port=12345,
        udf_prog=["/venv/bin/python", "-m", "udf.alert_state"],
        bridge_url="http://127.0.0.1:5555/x",
        bridge_token="s3cret",
        snapshot_interval="1s",
    )
    original = _leaves(_example())
    rendered = _leaves(tomllib.loads(path.read_text(encoding="utf-8")))
    var = (tmp_path / PATH_PLACEHOLDER.lstrip("/")).as_posix()
    expected = dict(original)
    for key, value in original.items():
        if isinstance(value, str) and value.startswith(PATH_PLACEHOLDER):
            expected[key] = var + value[len(PATH_PLACEHOLDER):]
    expected.update({
        "http.bind-address": "127.0.0.1:12345",
        "task.snapshot-interval": "1s",
        f"udf.functions.{UDF_NAME}.prog": "/venv/bin/python",
        f"udf.functions.{UDF_NAME}.args": ["-m", "udf.alert_state"],
        f"udf.functions.{UDF_NAME}Batch.prog": "/venv/bin/python",
        f"udf.functions.{UDF_NAME}Batch.args": ["-m", "udf.alert_state", "--batch"],
        "httppost.0.url": "http://127.0.0.1:5555/x",
        "httppost.0.headers": {"Authorization": "Bearer s3cret"},
    })
    assert rendered == expected

    without_udf = tomllib.loads(
        render_config(tmp_path, http_port=1, udf_prog=None, bridge_url="http://x/", bridge_token="t").read_text()
    )
    assert without_udf["udf"] == {"functions": {}}


@pytest.mark.e2e
def test_kapacitord_understands_every_example_key(tmp_path: Path, kapacitor_bin: Path) -> None:
    """kapacitord ignores unknown keys silently; its own dump must echo every value we set."""
    path = render_config(
        tmp_path, http_port=9092, udf_prog=["kapacitor-alert-state"], bridge_url="http://127.0.0.1:9095/alerts/oncall", bridge_token="CHANGE-ME"
    )
    dump = subprocess.run(
        [str(kapacitor_bin / "kapacitord"), "config", "-config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    effective = _leaves(tomllib.loads(dump))
    ours = _leaves(tomllib.loads(path.read_text(encoding="utf-8")))
    missing = {k: v for k, v in ours.items() if effective.get(k) != v}
    assert missing == {}, f"kapacitord ignored or changed these keys: {missing}"
