"""A private PostgreSQL server for tests, soak runs and benchmarks.

Started from the machine's ``initdb``/``postgres`` (``scripts/postgres-install``
installs Debian's package where they are missing) on a fresh data directory in a
temp dir and a free loopback port, with ``fsync`` on, so commits are as durable as
in production. PostgreSQL refuses to run as root: under root (CI) the server runs
as ``nobody`` and owns its data directory. Each test database is created from
``template0`` on demand, so tests never share tables.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import psycopg

__all__ = ["PgServer", "postgres_bin"]

REPO = Path(__file__).resolve().parents[1]


def postgres_bin() -> Path:
    """The directory holding ``initdb`` and ``postgres`` (installing them if needed)."""
    out = subprocess.run(
        [str(REPO / "scripts" / "postgres-install")], check=True, capture_output=True, text=True, timeout=900
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One ``postgres`` process on 127.0.0.1:<port> with its own data directory."""

    def __init__(self, bin_dir: Optional[Path] = None, max_connections: int = 200) -> None:
        self.bin_dir = bin_dir or postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="konc-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = _free_port()
        self.max_connections = max_connections
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self._uid: Optional[int] = None
        self._gid: Optional[int] = None
        self._databases = 0
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._uid, self._gid = nobody.pw_uid, nobody.pw_gid
            os.chmod(self.root, 0o755)
            os.chown(self.root, self._uid, self._gid)
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--no-locale", "--no-instructions", "--no-sync"])

    def _run(self, argv: List[str]) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=120, user=self._uid, group=self._gid,
                       extra_groups=[] if self._uid is not None else None)

    def start(self, timeout: float = 30.0) -> "PgServer":
        """Start (or restart) the server on the same port and wait until it accepts connections."""
        log = open(self.log, "ab")
        if self._uid is not None:
            os.chown(self.log, self._uid, self._gid or 0)
        self.proc = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data}",
             "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", f"max_connections={self.max_connections}",
             "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning"],
            stdout=log, stderr=subprocess.STDOUT, user=self._uid, group=self._gid,
            extra_groups=[] if self._uid is not None else None, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """Shut down: ``fast`` (SIGINT, clean) or ``immediate`` (SIGQUIT, crash-like)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its DSN."""
        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
