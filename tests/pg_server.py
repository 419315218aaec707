"""A throwaway PostgreSQL server for tests: `initdb` in a temporary folder, `postgres` on a free
port of 127.0.0.1, trust authentication, stopped and deleted at the end.

The binaries are PostgreSQL's own (Debian: `apt-get install postgresql`, which puts them in
/usr/lib/postgresql/<version>/bin; $PARETOSERVE_PG_BIN names another folder). PostgreSQL refuses
to run as root, so under root the cluster belongs to the `postgres` user the package creates and
the server runs as that user. `unavailable()` says why no server can be started (tests skip).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from core.net import free_port

SUPERUSER = "postgres"


def pg_bin() -> Path | None:
    """The folder holding initdb and postgres, or None."""
    if env := os.environ.get("PARETOSERVE_PG_BIN"):
        return Path(env)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for folder in reversed(found):
        if (folder / "initdb").exists():
            return folder
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _run_as() -> pwd.struct_passwd | None:
    """The user the server runs as: None = this process's user (not root)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")  # KeyError: no such user


def unavailable() -> str | None:
    """Why a server cannot be started here, or None."""
    folder = pg_bin()
    if folder is None or not (folder / "initdb").exists() or not (folder / "postgres").exists():
        return "PostgreSQL binaries not found (apt-get install postgresql, or $PARETOSERVE_PG_BIN)"
    try:
        _run_as()
    except KeyError:
        return "running as root and there is no `postgres` user to run PostgreSQL as"
    return None


class PgServer:
    """One PostgreSQL cluster. `start()` returns once it accepts connections."""

    def __init__(self, *, fsync: bool = True) -> None:
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        self.bin = pg_bin()
        assert self.bin is not None
        self.user = _run_as()
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="pstest-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._databases = 0
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._as_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                       "-A", "trust", "-E", "UTF8", "--no-sync"], check=True)  # fmt: skip

    def _as_user(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, **self._user_kw(), **kw)

    def _user_kw(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout_s: float = 60.0) -> PgServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server keeps it
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
             "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._user_kw(),
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"postgres not up in {timeout_s}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.2)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its DSN."""
        self._databases += 1
        name = name or f"t{self._databases}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def execute(self, dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
        """One statement on its own connection (autocommit); the rows it returned."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return "(no log)"

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after a grace period."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
