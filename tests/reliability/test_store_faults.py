"""Store faults: a full disk or read-only store means 503 (never 202), and recovery after.

Ways to break the disk under a running bridge:

* ``RLIMIT_FSIZE`` set in the bridge's ``preexec_fn`` (works anywhere, root or not):
  writes past the limit fail with EFBIG, as on a full disk; raising the limit
  again with ``prlimit`` (psutil) is "space returns";
* a tiny tmpfs as the store directory (real ENOSPC), grown by a remount;
* the open database and WAL files made immutable (``chattr +i``: writes through the
  open descriptors fail with EPERM), then mutable again. (A read-only remount is
  refused by Linux while files are open for writing, so it cannot be staged.)
* a store directory and file the bridge may not write, at start-up.

The tmpfs and chattr cases need root (CI runs as root); elsewhere they fail saying
so rather than skip. The RLIMIT case covers the same code path without root.
A corrupt, foreign or newer database must stop the bridge at start-up with a
message that says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import psutil
import pytest

from tests.bridge.conftest import make_bridge  # noqa: F401 - the fixture, reused
from tests.bridge.harness import BridgeProcess, Receiver, kapacitor_event

#: Each alert carries this much padding, so a few of them fill the tiny store.
PAD = 32 * 1024


def store_config(url: str, store_path: Optional[Path] = None) -> str:
    store = f'path = "{store_path}"\n' if store_path else ""
    return f"""
[store]
{store}
[delivery]
timeout = "1s"
backoff_initial = "50ms"
backoff_max = "200ms"
repeat_interval = "0s"
coalesce = "off"

[[target]]
name = "oncall"
type = "webhook"
url = "{url}/hook"
"""


def _alert(n: int) -> bytes:
    event = kapacitor_event(f"disk:host=h{n % 7}", ("CRITICAL", "OK")[n % 2], details=f"n={n} " + "p" * PAD)
    return json.dumps(event).encode()


def _n_of(rec_body: bytes) -> int:
    return int(json.loads(rec_body)["details"].split()[0][2:])


def _limit_file_size(limit: int) -> Callable[[], None]:
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG instead of killing the process."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


# These tests stage real faults (a full tmpfs, immutable files), which needs root with
# CAP_SYS_ADMIN on an ext4/xfs/btrfs tmp dir, as CI has. Where that is missing they fail
# saying so: a fault test that quietly does not run proves nothing.
_NEEDS_ROOT = "needs root with CAP_SYS_ADMIN and an ext4/xfs/btrfs tmp dir (as CI has)"


@contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="store-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.fail(f"mount tmpfs failed ({mounted.stderr.strip()}): this test {_NEEDS_ROOT}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def _post(bridge: BridgeProcess, n: int) -> int:
    status, _ = bridge.post_alert("oncall", _alert(n))
    return status


def _fill_until_503(bridge: BridgeProcess, start: int, limit: int = 200) -> Dict[int, int]:
    """Post padded alerts until the store refuses one; return n -> status."""
    statuses: Dict[int, int] = {}
    for n in range(start, start + limit):
        statuses[n] = _post(bridge, n)
        if statuses[n] != 202:
            break
    return statuses


def _health(bridge: BridgeProcess) -> tuple:
    resp = bridge.get("/healthz")
    return resp.status_code, resp.json()


def _check_fault_then_recovery(bridge: BridgeProcess, platform: Receiver, fill: Callable[[], Dict[int, int]], heal: Callable[[], object], fault_words: List[str]) -> None:
    """The shared script: fill → 503s and an unhealthy bridge → heal → 202s → all delivered."""
    statuses = fill()
    codes = set(statuses.values())
    assert codes <= {202, 503}, f"only 202 or 503 may answer an alert while the disk fills: {statuses}"
    assert 503 in codes, f"the store never refused a commit: {statuses}"
    assert 202 in codes, "the store refused from the start: the fault was set up too tight"
    last = max(statuses)
    # While the fault lasts: every further alert is refused, the bridge says why, and lives.
    more = {n: _post(bridge, n) for n in range(last + 1, last + 6)}
    assert set(more.values()) == {503}, more
    bridge.wait_until(lambda: _health(bridge)[0] == 503, timeout=10, message="healthz 503")
    status, health = _health(bridge)
    assert health["store"]["writable"] is False, health
    assert any(w in (health["store"]["error"] or "") for w in fault_words), health
    assert bridge.metric("oncall_store_writable") == 0.0
    body = bridge.post_alert("oncall", _alert(last + 6))[1]
    assert "NOT stored" in json.dumps(body), body
    assert bridge.running, "the bridge died on a full disk:\n" + bridge.log_text()[-3000:]
    assert "Traceback" not in bridge.log_text()

    heal()
    bridge.wait_until(lambda: _health(bridge)[0] == 200, timeout=15, message="healthz back to 200")
    after = {n: _post(bridge, n) for n in range(last + 10, last + 15)}
    assert set(after.values()) == {202}, after
    assert bridge.metric("oncall_store_writable") == 1.0

    # Every 202 is delivered, once the platform is reachable.
    accepted = {n for n, s in {**statuses, **more, **after}.items() if s == 202}
    platform.up()
    bridge.wait_until(
        lambda: accepted <= {_n_of(r.body) for r in platform.accepted()}, timeout=30, message="all 202s delivered"
    )
    assert bridge.running


class TestDiskFull:
    """No space: refuse with 503, say so in /healthz and /metrics, recover in place."""

    def test_file_size_limit(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """RLIMIT_FSIZE as a full disk: 503 never 202, healthz 503, then recovery without a restart."""
        platform = Receiver(default=200)
        platform.stop()  # rows stay queued, so the store keeps growing
        bridge = make_bridge(store_config(platform.url), preexec_fn=_limit_file_size(1 << 20))
        try:
            assert bridge.proc is not None
            process = psutil.Process(bridge.proc.pid)

            def fill() -> Dict[int, int]:
                # Leave the running bridge ~300 KB of room above its current files.
                biggest = max(p.stat().st_size for p in bridge.db_path.parent.glob("bridge.db*"))
                process.rlimit(psutil.RLIMIT_FSIZE, (biggest + 300_000, resource.RLIM_INFINITY))
                return _fill_until_503(bridge, 0)

            def heal() -> None:
                process.rlimit(psutil.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

            _check_fault_then_recovery(bridge, platform, fill, heal, ["disk full", "size limit", "I/O"])
        finally:
            platform.stop()

    def test_tiny_tmpfs(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """A 2 MB tmpfs fills up (ENOSPC): 503s; grown by a remount, the bridge recovers."""
        platform = Receiver(default=200)
        platform.stop()
        with tmpfs("2m") as where:
            bridge = make_bridge(store_config(platform.url, where / "bridge.db"))
            try:
                _check_fault_then_recovery(
                    bridge,
                    platform,
                    lambda: _fill_until_503(bridge, 0),
                    lambda: _remount(where, "size=64m"),
                    ["disk full", "size limit", "I/O"],
                )
            finally:
                bridge.close()
                platform.stop()


class TestReadOnly:
    """The store cannot be written."""

    def test_store_files_turn_unwritable(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """The open database and WAL made immutable under a running bridge: 503s; writable: recovery."""
        platform = Receiver(default=200)
        platform.stop()
        bridge = make_bridge(store_config(platform.url))
        files = [bridge.db_path, Path(f"{bridge.db_path}-wal")]
        if not _chattr("+i", files):
            bridge.close()
            platform.stop()
            pytest.fail(f"chattr +i failed: this test {_NEEDS_ROOT}")
        _chattr("-i", files)
        try:

            def fill() -> Dict[int, int]:
                statuses = {n: _post(bridge, n) for n in range(3)}
                assert _chattr("+i", files)
                statuses.update({n: _post(bridge, n) for n in range(3, 6)})
                return statuses

            _check_fault_then_recovery(
                bridge, platform, fill, lambda: _chattr("-i", files), ["read-only", "permission", "I/O"]
            )
        finally:
            _chattr("-i", files)
            bridge.close()
            platform.stop()

    def test_unwritable_file_and_directory_at_start(self, make_bridge: Callable[..., BridgeProcess], tmp_path: Path) -> None:
        """A store the bridge may not write: no 202 ever; a clear error; fine again once writable."""
        platform = Receiver(default=200)
        store = tmp_path / "store"
        store.mkdir()
        bridge = make_bridge(store_config(platform.url, store / "bridge.db"))
        try:
            assert _post(bridge, 0) == 202
            assert bridge.stop() == 0
            files = [store, *store.glob("bridge.db*")]
            lock, unlock = _unwritable(files)
            assert lock(), f"cannot make the store unwritable: this test {_NEEDS_ROOT}"
            try:
                bridge.start(wait=False)
                deadline = time.monotonic() + 15
                statuses: List[int] = []
                while time.monotonic() < deadline and bridge.running:
                    try:
                        statuses.append(_post(bridge, 1 + len(statuses)))
                        if len(statuses) >= 3 and _health(bridge)[0] == 503:
                            break
                    except Exception:  # noqa: BLE001 - not listening (yet, or it exited)
                        time.sleep(0.1)
                assert 202 not in statuses, f"an unwritable store acknowledged alerts: {statuses}"
                log = bridge.log_text()
                if bridge.running:
                    # Running without a usable store: every alert refused, and /healthz says why.
                    assert statuses and set(statuses) == {503}, statuses
                    status, health = _health(bridge)
                    assert status == 503 and health["store"]["writable"] is False, health
                else:
                    assert bridge.proc is not None and bridge.proc.returncode != 0
                    assert str(store) in log, log[-2000:]
                    # Say what is wrong; never advise moving a valid store (with its queue) away.
                    words = ("read-only", "readonly", "permission", "not permitted", "not writable", "unwritable")
                    assert any(w in log.lower() for w in words), log[-2000:]
                    assert "not a kapacitor-oncall store" not in log and "move the file away" not in log, log[-2000:]
                assert "Traceback" not in log, log[-3000:]
            finally:
                unlock()

            # Writable again: the bridge works (after a restart if it had exited).
            if not bridge.running:
                bridge.start()
            bridge.wait_until(lambda: _health(bridge)[0] == 200, timeout=15, message="writable again")
            assert _post(bridge, 100) == 202
            platform.wait_for(2, timeout=15, only_accepted=True)
        finally:
            platform.stop()


def _unwritable(files: List[Path]) -> tuple:
    """(lock, unlock) making ``files`` unwritable: modes for a user, the immutable flag for root."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode & 0o777 for p in files}

        def lock() -> bool:
            for p in files:
                p.chmod(0o555 if p.is_dir() else 0o444)
            return True

        def unlock() -> None:
            for p, mode in modes.items():
                p.chmod(mode)

        return lock, unlock
    return (lambda: _chattr("+i", files)), (lambda: _chattr("-i", files))


def _chattr(flag: str, files: List[Path]) -> bool:
    """Set or clear the immutable flag: writes through already open descriptors then fail (EPERM)."""
    try:
        return subprocess.run(["chattr", flag, *map(str, files)], capture_output=True).returncode == 0
    except OSError:
        return False


# -- files that are not a usable store -------------------------------------------------


def _start_fails(bridge: BridgeProcess) -> str:
    """Start, expect a quick non-zero exit; return what it said."""
    bridge.start(wait=False)
    assert bridge.proc is not None
    try:
        code = bridge.proc.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError("the bridge started on a store it should refuse:\n" + bridge.log_text()) from None
    log = bridge.log_text()
    assert code != 0, log
    assert "Traceback" not in log, "a traceback instead of a clear error:\n" + log
    assert str(bridge.db_path) in log, "the error does not name the file:\n" + log
    return log


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TestBadDatabase:
    """Start-up refuses a file that is not our store, and says so."""

    def test_random_bytes(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """Garbage where the store should be: non-zero exit, 'not a kapacitor-oncall store'."""
        bridge = make_bridge(store_config("http://127.0.0.1:9"), start=False)
        bridge.db_path.write_bytes(os.urandom(64 * 1024))
        before = _sha(bridge.db_path)
        log = _start_fails(bridge)
        assert "not a kapacitor-oncall store" in log or "corrupt" in log, log
        assert _sha(bridge.db_path) == before, "the bridge modified the file it refused"

    def test_foreign_sqlite_database(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """Another application's SQLite file is refused and left untouched."""
        bridge = make_bridge(store_config("http://127.0.0.1:9"), start=False)
        conn = sqlite3.connect(bridge.db_path)
        conn.executescript("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 9.5);")
        conn.close()
        before = _sha(bridge.db_path)
        log = _start_fails(bridge)
        assert "another application" in log, log
        assert _sha(bridge.db_path) == before
        queue = bridge.cli("queue")
        assert queue.returncode != 0 and "another application" in queue.stderr, queue

    def test_newer_schema(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """A store written by a newer bridge is refused, not downgraded."""
        bridge = make_bridge(store_config("http://127.0.0.1:9"))
        assert bridge.stop() == 0
        conn = sqlite3.connect(bridge.db_path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        assert "newer" in _start_fails(bridge)

    def test_corrupted_pages(self, make_bridge: Callable[..., BridgeProcess]) -> None:
        """Our own store with pages overwritten: start-up says corrupt; queue says so too."""
        platform = Receiver(default=500)
        bridge = make_bridge(store_config(platform.url))
        try:
            for n in range(40):
                assert _post(bridge, n) == 202
            assert bridge.stop() == 0
        finally:
            platform.stop()
        data = bytearray(bridge.db_path.read_bytes())
        assert len(data) > 5 * 4096, len(data)
        for page in range(2, len(data) // 4096):
            data[page * 4096 : page * 4096 + 64] = b"\xff" * 64
        bridge.db_path.write_bytes(bytes(data))
        log = _start_fails(bridge)
        assert "corrupt" in log or "not a kapacitor-oncall store" in log, log
        queue = bridge.cli("queue")
        assert queue.returncode != 0 and ("corrupt" in queue.stderr or "not a kapacitor" in queue.stderr), queue
        assert "Traceback" not in queue.stderr
