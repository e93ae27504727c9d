"""The anchor: InfluxData's own Python UDF agent and examples, from a local checkout.

Nothing of theirs is copied into this repository. Given a checkout of
github.com/influxdata/kapacitor, :func:`prepare` builds, in a temporary directory
outside the repository, an import path holding a copy of their
``udf/agent/py/kapacitor`` package whose ``udf_pb2.py`` is regenerated from their
``udf.proto`` with the same pinned protoc our ``scripts/gen-proto`` uses. Their
example scripts then run unchanged from the checkout, with ``python -u`` as
Kapacitor's documentation runs them, on the same interpreter and protobuf runtime
(upb) as our UDFs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from .common import REPO_ROOT

__all__ = ["Anchor", "AnchorError", "prepare", "protoc_python"]


class AnchorError(RuntimeError):
    """The checkout does not look like Kapacitor's repository, or protoc failed."""


@dataclass
class Anchor:
    checkout: Path
    commit: str
    describe: str
    import_root: Path  # goes on PYTHONPATH
    moving_avg: Path
    mirror: Path
    original_gencode: str
    regenerated_gencode: str
    protoc: str

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.import_root)
        env.pop("PYTHONSTARTUP", None)
        return env

    def cleanup(self) -> None:
        shutil.rmtree(self.import_root, ignore_errors=True)


def protoc_python() -> Path:
    """The interpreter of our pinned generator venv (grpcio-tools 1.71.0 = protoc 29.0).

    ``scripts/gen-proto --check`` creates it when missing (and checks our own modules).
    """
    cache = Path(os.environ.get("KAPACITOR_ONCALL_CACHE", Path.home() / ".cache" / "kapacitor-oncall"))
    py = cache / "protoc-grpcio-tools-1.71.0" / "bin" / "python"
    if not py.exists():
        subprocess.run([str(REPO_ROOT / "scripts" / "gen-proto"), "--check"], check=False, capture_output=True)
    if not py.exists():
        raise AnchorError(f"no protoc venv at {py} (scripts/gen-proto could not create it)")
    return py


def _gencode_version(path: Path) -> str:
    m = re.search(r"Protobuf Python Version: ([\d.]+)", path.read_text(encoding="utf-8", errors="replace"))
    return m.group(1) if m else "pre-5 (no version line)"


def _git(checkout: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _find(root: Path, name: str) -> Path:
    hits = sorted(root.glob(f"udf/agent/examples/**/{name}"))
    if not hits:
        raise AnchorError(f"{name} not found under {root}/udf/agent/examples")
    return hits[0]


def prepare(checkout: Path, tmp_parent: Optional[str] = None) -> Anchor:
    """Validate the checkout and build the import path with a regenerated ``udf_pb2``."""
    checkout = checkout.resolve()
    agent_dir = checkout / "udf" / "agent"
    package = agent_dir / "py" / "kapacitor"
    proto = agent_dir / "udf.proto"
    if not (package / "udf" / "agent.py").exists() or not proto.exists():
        raise AnchorError(f"{checkout} is not a checkout of influxdata/kapacitor (no udf/agent/py, udf.proto)")
    moving_avg = _find(checkout, "moving_avg.py")
    mirror = _find(checkout, "mirror.py")
    root = Path(tempfile.mkdtemp(prefix="kapacitor-official-", dir=tmp_parent))
    if REPO_ROOT in root.parents:
        raise AnchorError("the anchor's import path must live outside this repository")
    shutil.copytree(package, root / "kapacitor", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = root / "kapacitor" / "udf"
    old_module = target / "udf_pb2.py"
    original = _gencode_version(old_module) if old_module.exists() else "none in the checkout"
    old_module.unlink(missing_ok=True)
    py = protoc_python()
    proc = subprocess.run(
        [str(py), "-m", "grpc_tools.protoc", f"-I{agent_dir}", f"--python_out={target}", str(proto)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not (target / "udf_pb2.py").exists():
        shutil.rmtree(root, ignore_errors=True)
        raise AnchorError(f"protoc failed on {proto}: {proc.stderr.strip()}")
    version = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('grpcio-tools'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return Anchor(
        checkout=checkout,
        commit=_git(checkout, "rev-parse", "HEAD") or "unknown (not a git checkout)",
        describe=_git(checkout, "describe", "--tags", "--always"),
        import_root=root,
        moving_avg=moving_avg,
        mirror=mirror,
        original_gencode=original,
        regenerated_gencode=_gencode_version(target / "udf_pb2.py"),
        protoc=f"grpcio-tools {version or '1.71.0'} ({py.parent.parent})",
    )
