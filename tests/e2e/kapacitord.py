"""Drive a real kapacitord from tests (and demos): build it, render its config, start/stop it, talk HTTP.

Importable helper, not a test module; it deliberately does not import pytest.

The config a test kapacitord runs is ``kapacitor.conf.example`` itself, rendered by
:func:`render_config`, which rewrites only machine-specific lines (paths under
``/var/lib/kapacitor``, the bind port, bridge URL/token, UDF command, snapshot interval).
That way the example that ships is the one that is exercised.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Callable, Optional, TypeVar, Union

import requests

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.9/3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "kapacitor-build"
EXAMPLE_CONFIG = REPO_ROOT / "kapacitor.conf.example"

#: Every path in the example starts with this; render_config maps it into the test's tmpdir.
PATH_PLACEHOLDER = "/var/lib/kapacitor"
#: Name of the UDF table in the example (``@alertState()`` in TICKscript).
UDF_NAME = "alertState"
UDF_SECTION = f"udf.functions.{UDF_NAME}"
#: UDF tables of the example -> arguments they add to the command (the batch variant).
UDF_SECTIONS = {UDF_SECTION: [], f"udf.functions.{UDF_NAME}Batch": ["--batch"]}
#: Endpoint name of the bridge in ``[[httppost]]`` (``.post().endpoint('oncall-bridge')``).
BRIDGE_ENDPOINT = "oncall-bridge"

API_PREFIX = "/kapacitor/v1"
_HTTP_TIMEOUT = 10.0

Json = dict[str, Any]
DbRp = tuple[str, str]


T = TypeVar("T")


def terminate(proc: "Optional[subprocess.Popen[bytes]]", timeout: float) -> Optional[int]:
    """SIGTERM, SIGKILL after ``timeout``; the exit code, or None when there was no process."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class KapacitordError(RuntimeError):
    """kapacitord failed to build, start or answer as expected (message carries the log tail)."""


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------

#: What ``scripts/kapacitor-build`` builds without an argument, and what the demo runs.
DEFAULT_VERSION = "1.8.6"
#: Every version the e2e suite runs against: the current line first, then the oldest supported.
SUPPORTED_VERSIONS = ("1.8.6", "1.5.9")
#: Comma-separated subset of SUPPORTED_VERSIONS to run locally (CI runs all of them).
VERSIONS_ENV = "KAPACITOR_VERSIONS"

_built: dict[str, Path] = {}
_build_lock = threading.Lock()


def versions_under_test(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """The kapacitord versions to run the suite against: ``$KAPACITOR_VERSIONS`` or all supported.

    An unknown version is an error, not an empty matrix: a typo must not turn the suite green.
    """
    raw = (os.environ if environ is None else environ).get(VERSIONS_ENV, "").strip()
    if not raw:
        return list(SUPPORTED_VERSIONS)
    wanted = [v.strip().lstrip("v") for v in raw.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in SUPPORTED_VERSIONS]
    if unknown or not wanted:
        raise ValueError(
            f"{VERSIONS_ENV}={raw!r}: unknown version(s) {unknown}; supported: {', '.join(SUPPORTED_VERSIONS)}"
        )
    return list(dict.fromkeys(wanted))


def ensure_built(version: str = DEFAULT_VERSION) -> Path:
    """Return the bin dir holding ``kapacitord``/``kapacitor`` of ``version``, building it once.

    scripts/kapacitor-build is idempotent and takes a per-version file lock, so parallel
    pytest-xdist workers and a concurrently running demo share one build; within a process the
    result is memoised.
    """
    with _build_lock:
        if version in _built:
            return _built[version]
        bin_dir = run_build_script(BUILD_SCRIPT, version, ("kapacitord", "kapacitor"))
        _built[version] = bin_dir
        return bin_dir


def run_build_script(script: Path, version: str, binaries: Sequence[str]) -> Path:
    """Run one of the scripts/*-build recipes; its last stdout line is the bin dir.

    Raises KapacitordError with the script's stderr tail when it fails or the binaries are
    missing, so a failed build reads as a build failure in the test report.
    """
    proc = subprocess.run(
        [str(script), version],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise KapacitordError(
            f"{script} {version} failed with exit code {proc.returncode}:\n{_tail(proc.stderr, 40)}"
        )
    lines = proc.stdout.strip().splitlines()
    bin_dir = Path(lines[-1]) if lines else Path()
    for name in binaries:
        if not os.access(bin_dir / name, os.X_OK):
            raise KapacitordError(
                f"{script} {version} printed {bin_dir!s} but {name} is not executable there:\n"
                f"{_tail(proc.stderr, 20)}"
            )
    return bin_dir


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently unused TCP port on ``host``.

    Racy by nature (another process may grab it before kapacitord binds); callers that start
    servers should retry on "address already in use", as the conftest fixture does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# config rendering
# --------------------------------------------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(r"^(\s*)([A-Za-z0-9_\-]+)(\s*=\s*)(.*)$")


def _toml_str(value: str) -> str:
    """A TOML basic string; JSON string escapes are a subset of TOML's."""
    return json.dumps(value, ensure_ascii=False)


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def render_config(
    tmpdir: Union[str, os.PathLike[str]],
    *,
    http_port: int,
    udf_prog: Optional[Sequence[str]],
    bridge_url: str,
    bridge_token: str,
    snapshot_interval: str = "1s",
    extra: str = "",
    influxdb_url: Optional[str] = None,
    example: Path = EXAMPLE_CONFIG,
) -> Path:
    """Write ``<tmpdir>/kapacitor.conf`` from the example with only machine-specific lines changed.

    Rewrites, line by line (comments and everything else are kept verbatim):

    * every quoted value starting with ``/var/lib/kapacitor`` -> ``<tmpdir>/var/lib/kapacitor``
      (``data_dir``, ``[storage] boltdb``, ``[replay] dir``, ``[task] dir``);
    * ``[http] bind-address`` -> ``127.0.0.1:<http_port>``;
    * ``[task] snapshot-interval`` -> ``snapshot_interval``;
    * ``[[httppost]]`` ``url`` -> ``bridge_url`` and ``headers`` -> ``Bearer <bridge_token>``;
    * ``[udf.functions.alertState]`` and ``[udf.functions.alertStateBatch]`` ``prog``/``args`` ->
      ``udf_prog[0]``/``udf_prog[1:]`` (plus ``--batch`` for the batch table), or, with
      ``udf_prog=None``, those tables' headers and keys are dropped (comments stay), so
      kapacitord starts without the UDF;
    * with ``influxdb_url``: ``[[influxdb]]`` ``enabled`` -> true and ``urls`` -> that URL, so
      kapacitord subscribes to that InfluxDB (the example's subscription keys stay as shipped).

    ``extra`` is appended verbatim; it must start with a ``[table]`` header and may not repeat a
    table of the example (TOML forbids redefinition). Every targeted line must exist exactly once,
    so the example and this renderer cannot drift apart silently. Returns the config path.
    """
    tmp = Path(tmpdir)
    var_dir = tmp / PATH_PLACEHOLDER.lstrip("/")
    var_dir.mkdir(parents=True, exist_ok=True)

    replacements: dict[tuple[str, str], str] = {
        ("http", "bind-address"): _toml_str(f"127.0.0.1:{http_port}"),
        ("task", "snapshot-interval"): _toml_str(snapshot_interval),
        ("httppost", "url"): _toml_str(bridge_url),
        ("httppost", "headers"): "{ Authorization = " + _toml_str(f"Bearer {bridge_token}") + " }",
    }
    if influxdb_url is not None:
        replacements[("influxdb", "enabled")] = "true"
        replacements[("influxdb", "urls")] = _toml_list([influxdb_url])
    if udf_prog is not None:
        if not udf_prog:
            raise ValueError("udf_prog must hold at least the program (or be None to omit the UDF)")
        for udf_section, udf_args in UDF_SECTIONS.items():
            replacements[(udf_section, "prog")] = _toml_str(udf_prog[0])
            replacements[(udf_section, "args")] = _toml_list(list(udf_prog[1:]) + udf_args)
    hits: dict[tuple[str, str], int] = {k: 0 for k in replacements}
    placeholder_hits = 0
    dropped_udf = False

    section = ""
    out: list[str] = []
    for line in example.read_text(encoding="utf-8").splitlines():
        header = _HEADER_RE.match(line)
        if header:
            section = header.group(2)
            if section in UDF_SECTIONS and udf_prog is None:
                dropped_udf = True
                continue
            out.append(line)
            continue
        key = _KEY_RE.match(line)
        if key is None or line.lstrip().startswith("#"):
            out.append(line)
            continue
        if section in UDF_SECTIONS and udf_prog is None:
            continue
        indent, name, eq, value = key.groups()
        target = (section, name)
        if target in replacements:
            hits[target] += 1
            value = replacements[target]
        elif value.startswith('"' + PATH_PLACEHOLDER):
            placeholder_hits += 1
            value = value.replace(PATH_PLACEHOLDER, var_dir.as_posix(), 1)
        out.append(f"{indent}{name}{eq}{value}")

    problems = [f"[{s}] {k} found {n} times" for (s, k), n in hits.items() if n != 1]
    if placeholder_hits == 0:
        problems.append(f"no value starting with {PATH_PLACEHOLDER}")
    if udf_prog is None and not dropped_udf:
        problems.append(f"no [{UDF_SECTION}] table to drop")
    if problems:
        raise ValueError(f"{example} no longer matches render_config: " + "; ".join(problems))

    extra = extra.strip("\n")
    if extra:
        first = next((ln for ln in extra.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
        if not _HEADER_RE.match(first):
            raise ValueError("extra must start with a [table] header, else it lands in the example's last table")
        out += ["", "# --- extra from render_config ---", extra]

    text = "\n".join(out) + "\n"
    tomllib.loads(text)  # fail here, with a TOML error, rather than in kapacitord's log
    path = tmp / "kapacitor.conf"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# the daemon
# --------------------------------------------------------------------------------------------


_SERVICE_NOISE = re.compile(r'lvl=debug msg="(?:opening|opened|closing|closed) service"')


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Kapacitord:
    """One kapacitord process on loopback, plus thin wrappers over the HTTP API the tests use.

    Runs with ``TZ=UTC`` (1.5.9 renders some alert times in local time), cwd = ``workdir``,
    stdout+stderr appended to ``workdir/kapacitord.log`` (kept across restarts).
    """

    def __init__(
        self,
        bin_dir: Path,
        config: Path,
        workdir: Path,
        *,
        http_port: int,
        env: Optional[Mapping[str, str]] = None,
        log_level: str = "debug",
        startup_timeout: float = 30.0,
        version: str = "",
    ) -> None:
        self.bin_dir = Path(bin_dir)
        #: The kapacitord version (``"1.8.6"``), for the few places where behaviour differs.
        self.version = version
        self.config = Path(config)
        self.workdir = Path(workdir)
        self.http_port = http_port
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.log_path = self.workdir / "kapacitord.log"
        self.startup_timeout = startup_timeout
        self._extra_env = dict(env or {})
        self._log_level = log_level
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._log_file: Optional[IO[bytes]] = None
        self._starts = 0
        self.session = requests.Session()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "Kapacitord":
        """Spawn kapacitord and block until its task API answers (see :meth:`wait_ready`)."""
        if self.running():
            raise KapacitordError("kapacitord is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        env = dict(os.environ)
        env.update(self._extra_env)
        env["TZ"] = "UTC"
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"=== kapacitord start #{self._starts} on port {self.http_port} ===\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            [str(self.bin_dir / "kapacitord"), "-config", str(self.config), "-log-level", self._log_level],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Wait for ``/ping`` -> 204, then ``/tasks`` -> 200.

        Ping alone is not enough: the HTTP listener opens before the UDF probe and the task
        store, so the task routes only exist once startup really finished.
        """
        deadline = time.monotonic() + self.startup_timeout
        stage = "ping"
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                raise KapacitordError(f"kapacitord exited with code {code} during startup:\n{self.log_tail()}")
            try:
                if stage == "ping":
                    r = self.session.get(self.api("/ping"), timeout=2)
                    last = f"GET /ping -> {r.status_code}"
                    if r.status_code == 204:
                        stage = "tasks"
                        continue
                else:
                    r = self.session.get(self.api("/tasks"), timeout=2)
                    last = f"GET /tasks -> {r.status_code}"
                    if r.status_code == 200:
                        return
            except requests.RequestException as exc:
                last = f"{stage}: {exc.__class__.__name__}"
            time.sleep(0.05)
        raise KapacitordError(
            f"kapacitord not ready after {self.startup_timeout:.0f}s ({last}):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM (clean shutdown: tasks stopped, UDF stdin closed), SIGKILL after ``timeout``.

        Returns the exit code (None if it was not running). Safe to call twice.
        """
        proc, self._proc = self._proc, None
        code = terminate(proc, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.session.close()
        return code

    def restart(self) -> "Kapacitord":
        """Stop and start again on the same port, config and data dir (state in BoltDB survives)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the process and release the HTTP session."""
        self.stop()

    def __enter__(self) -> "Kapacitord":
        return self.start() if not self.running() else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- logs ------------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything kapacitord (and, re-logged by it, the UDFs' stderr) wrote so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """Last ``lines`` log lines for error messages, minus the per-service open/close noise.

        kapacitord logs ~100 "opening/closing service" debug lines at startup and shutdown,
        which would otherwise push the real cause (UDF stderr, the error) out of the tail.
        """
        kept = [ln for ln in self.log_text().splitlines() if not _SERVICE_NOISE.search(ln)]
        return f"--- last {lines} relevant lines of {self.log_path} ---\n" + "\n".join(kept[-lines:])

    # -- HTTP ------------------------------------------------------------------------------------

    def api(self, path: str) -> str:
        """Absolute URL of ``/kapacitor/v1<path>``."""
        return f"{self.base_url}{API_PREFIX}{path}"

    def _check(self, r: requests.Response, *expected: int) -> requests.Response:
        if r.status_code not in expected:
            raise KapacitordError(
                f"{r.request.method} {r.url} -> {r.status_code} (expected {expected}): {r.text[:2000]}"
            )
        return r

    def define_task(
        self,
        task_id: str,
        script: str,
        dbrps: Iterable[DbRp] = (("mydb", "autogen"),),
        status: str = "enabled",
        *,
        task_type: Optional[str] = None,
        task_vars: Optional[Mapping[str, Any]] = None,
    ) -> Json:
        """POST /tasks. Type is inferred by kapacitord from the script unless given.

        Pass ``dbrps=()`` when the script declares ``dbrp "db"."rp"`` itself (both is an error).
        ``task_vars`` is sent as ``vars``: ``{"name": {"type": "float", "value": 1.5}}``.
        Enabling is asynchronous for UDF nodes: use :meth:`wait_task` to see ``executing``/``error``.
        """
        body: Json = {"id": task_id, "script": script, "status": status}
        rps = [{"db": db, "rp": rp} for db, rp in dbrps]
        if rps:
            body["dbrps"] = rps
        if task_type is not None:
            body["type"] = task_type
        if task_vars is not None:
            body["vars"] = dict(task_vars)
        r = self.session.post(self.api("/tasks"), json=body, timeout=_HTTP_TIMEOUT)
        result: Json = self._check(r, 200).json()
        return result

    def task(self, task_id: str) -> Json:
        """GET /tasks/<id>: status, executing, error, stats, dot, ..."""
        r = self.session.get(self.api(f"/tasks/{task_id}"), timeout=_HTTP_TIMEOUT)
        result: Json = self._check(r, 200).json()
        return result

    def update_task(self, task_id: str, **fields: Any) -> Json:
        """PATCH /tasks/<id> with e.g. ``script=...`` or ``status=...`` (a running task restarts)."""
        r = self.session.patch(self.api(f"/tasks/{task_id}"), json=fields, timeout=_HTTP_TIMEOUT)
        result: Json = self._check(r, 200).json()
        return result

    def enable(self, task_id: str) -> Json:
        return self.update_task(task_id, status="enabled")

    def disable(self, task_id: str) -> Json:
        return self.update_task(task_id, status="disabled")

    def delete(self, task_id: str) -> None:
        """DELETE /tasks/<id>; also drops its snapshot and anonymous alert topic."""
        self._check(self.session.delete(self.api(f"/tasks/{task_id}"), timeout=_HTTP_TIMEOUT), 204)

    def write(
        self,
        db: str,
        rp: str,
        lines: Union[str, Iterable[str]],
        precision: str = "s",
    ) -> None:
        """POST /write (line protocol). ``rp`` must equal the task's dbrp rp exactly ("autogen").

        Points only reach tasks executing at that moment, and are processed asynchronously.
        """
        body = lines if isinstance(lines, str) else "\n".join(lines)
        r = self.session.post(
            self.api("/write"),
            params={"db": db, "rp": rp, "precision": precision},
            data=body.encode("utf-8"),
            timeout=_HTTP_TIMEOUT,
        )
        self._check(r, 204)

    def http_out(self, task_id: str, name: str) -> Json:
        """GET /tasks/<task>/<name> of an ``|httpOut('<name>')`` node: last row per group.

        ``{"series": null}`` before data; 404 while the task is not executing.
        """
        r = self.session.get(self.api(f"/tasks/{task_id}/{name}"), timeout=_HTTP_TIMEOUT)
        result: Json = self._check(r, 200).json()
        return result

    def wait_task(self, task_id: str, predicate: Callable[[Json], bool], timeout: float = 10.0) -> Json:
        """Poll GET /tasks/<id> until ``predicate(task)`` holds; returns that task JSON.

        Task start/failure (UDF Init, snapshot restore) happens in goroutines after the HTTP
        call returned, so tests must poll rather than assert right after enable.
        """
        return self.wait_for(lambda: self.task(task_id), predicate, timeout, what=f"task {task_id}")

    def wait_http_out(
        self, task_id: str, name: str, predicate: Callable[[Json], bool], timeout: float = 10.0
    ) -> Json:
        """Poll an httpOut node until ``predicate(body)`` holds (writes are processed asynchronously)."""
        return self.wait_for(
            lambda: self.http_out(task_id, name), predicate, timeout, what=f"httpOut {task_id}/{name}"
        )

    def wait_for(
        self,
        fetch: Callable[[], T],
        predicate: Callable[[T], bool],
        timeout: float = 10.0,
        *,
        what: str = "condition",
        interval: float = 0.05,
    ) -> T:
        """Generic poll loop; on timeout the error shows the last value seen and the log tail."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                value = fetch()
                if predicate(value):
                    return value
                last = value
            except KapacitordError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise KapacitordError(
                    f"{what} did not satisfy the predicate within {timeout}s; last: "
                    f"{json.dumps(last, indent=1)[:3000]}\n{self.log_tail()}"
                )
            if not self.running():
                raise KapacitordError(f"kapacitord died while waiting for {what}:\n{self.log_tail()}")
            time.sleep(interval)

    def add_topic_handler(self, topic: str, spec: Mapping[str, Any]) -> Json:
        """POST /alerts/topics/<topic>/handlers, e.g. ``{"id": "h", "kind": "post", "options": {"url": ...}}``."""
        r = self.session.post(self.api(f"/alerts/topics/{topic}/handlers"), json=dict(spec), timeout=_HTTP_TIMEOUT)
        result: Json = self._check(r, 200).json()
        return result

    def topic_events(self, topic: str, min_level: Optional[str] = None) -> list[Json]:
        """Current event state per alert id of a topic (anonymous topic: ``main:<task>:<node>``)."""
        params = {"min-level": min_level} if min_level else None
        r = self.session.get(self.api(f"/alerts/topics/{topic}/events"), params=params, timeout=_HTTP_TIMEOUT)
        events: list[Json] = self._check(r, 200).json().get("events") or []
        return events

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running() else "stopped"
        return f"<Kapacitord {self.base_url} {state} workdir={self.workdir}>"
