"""The README's install path works on a host without this repository: the wheel and sdist
build and pass ``twine check``, the wheel installs into a fresh venv, both console scripts
answer ``--version``, and the installed example config passes ``check-config``. The units,
the README and the example files agree with each other."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from bridge import __version__

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "kapacitor-oncall-bridge.service"
VENV_BIN = "/opt/kapacitor-oncall/venv/bin"

#: Values for the env: references of bridge.toml.example's active part.
EXAMPLE_ENV = {
    "BRIDGE_TOKEN": "CHANGE-ME",
    "ONCALL_KAPACITOR_URL": "https://oncall.example.com/integrations/v1/kapacitor/T0k3nT0k3n/",
}


def run(*args: object, env: "dict[str, str] | None" = None, timeout: float = 600) -> "subprocess.CompletedProcess[str]":
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make dist``'s two commands: build sdist + wheel (no index needed), then twine check."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO)
    return out


@pytest.mark.slow
class TestWheel:
    def test_twine_check(self, dist: Path) -> None:
        """Both artifacts exist and their metadata renders on a package index."""
        wheel = list(dist.glob("kapacitor_oncall-*-py3-none-any.whl"))
        sdist = list(dist.glob("kapacitor[-_]oncall-*.tar.gz"))
        assert len(wheel) == 1 and len(sdist) == 1, list(dist.iterdir())
        run(sys.executable, "-m", "twine", "check", "--strict", wheel[0], sdist[0])

    def test_installs_and_runs(self, dist: Path, tmp_path: Path) -> None:
        """A fresh venv (no access to this checkout) gets both scripts, the examples, and a passing check-config."""
        env_dir = tmp_path / "venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        bin_dir = env_dir / "bin"
        (wheel,) = dist.glob("*.whl")
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        run(bin_dir / "pip", "install", "--quiet", "--disable-pip-version-check", wheel, env=clean)

        outside = {**clean, "PYTHONSAFEPATH": "1"}
        bridge = run(bin_dir / "kapacitor-oncall-bridge", "--version", env=outside).stdout
        assert bridge.strip() == f"kapacitor-oncall-bridge {__version__}"
        udf = run(bin_dir / "kapacitor-alert-state", "--version", env=outside).stdout
        assert udf.strip().endswith(__version__), udf
        where = run(bin_dir / "python", "-c", "import bridge; print(bridge.__file__)", env=outside).stdout
        assert str(env_dir) in where, "the script ran this checkout, not the installed wheel"

        share = env_dir / "share" / "kapacitor-oncall"
        for name in ("bridge.toml.example", "kapacitor.conf.example", "configuration.md", "deploy/kapacitor-oncall-bridge.service",
                     "deploy/topic-handler-oncall.yaml", "tick/cpu_alert_state.tick"):
            assert (share / name).is_file(), name
        assert (share / "bridge.toml.example").read_bytes() == (REPO / "bridge.toml.example").read_bytes()

        token = tmp_path / "hook-token"
        token.write_text("Bearer example-token-123\n")
        config = tmp_path / "bridge.toml"
        config.write_text((share / "bridge.toml.example").read_text().replace("/etc/kapacitor-oncall/hook-token", str(token)))
        checked = run(bin_dir / "kapacitor-oncall-bridge", "check-config", "--config", config, env={**outside, **EXAMPLE_ENV})
        assert "config OK" in checked.stdout and "token: set" in checked.stdout
        assert "T0k3nT0k3n" not in checked.stdout + checked.stderr


class TestDocsAgree:
    def test_units_restart_always_and_check_first(self) -> None:
        """Both units restart always and run the venv's scripts; the bridge checks its config first."""
        for unit in sorted((REPO / "deploy").glob("*.service")):
            text = unit.read_text()
            assert re.search(r"^Restart=always$", text, re.M), unit.name
            (start,) = re.findall(r"^ExecStart=(\S+)", text, re.M)
            assert start.startswith(VENV_BIN + "/"), unit.name
        text = UNIT.read_text()
        (pre,) = re.findall(r"^ExecStartPre=(.+)$", text, re.M)
        assert pre.split()[:2] == [f"{VENV_BIN}/kapacitor-oncall-bridge", "check-config"]
        assert "pip install kapacitor-oncall\n" not in text  # no index serves that name

    def test_readme_install_matches(self) -> None:
        """The README's Install section uses make dist, the wheel, the units' venv, Restart=always and -dbrp."""
        readme = (REPO / "README.md").read_text()
        install = readme.split("## Install\n", 1)[1].split("\n## ", 1)[0]
        assert "make dist" in install
        assert f"python3 -m venv {VENV_BIN.rsplit('/bin', 1)[0]}" in install
        assert f"{VENV_BIN}/pip install ./dist/kapacitor_oncall-*.whl" in install
        assert "check-config" in install and "Restart=always" in install and "ExecStartPre" in install
        assert re.search(r"kapacitor define \S+ -tick \S+ -dbrp telegraf\.autogen", install)
        assert "Restart=on-failure" not in readme
        makefile = (REPO / "Makefile").read_text()
        assert re.search(r"^dist:", makefile, re.M) and "twine check" in makefile
