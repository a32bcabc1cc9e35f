"""An embedded PostgreSQL 16 for the local stack and the tests.

The server binaries come from the `pgserver` wheel, but the process is ours:
tests stop it hard and restart it on the same TCP port, which pgserver's own
reference-counted lifecycle does not allow. It listens on TCP only, like the
managed PostgreSQL that production uses.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pacs_devstack.ports import free_port
from pacs_devstack.process import dying_with_parent, log_tail, signal_group, stop_child

_log = logging.getLogger(__name__)

# postgres refuses to run as root; when we are root it runs as this user,
# the same one pgserver itself creates for that case.
_SYSTEM_USER = "pgserver"


class PostgresStartError(RuntimeError):
    """The embedded server did not come up; the message ends with its log."""


@dataclass(frozen=True)
class PostgresConfig:
    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    # Tests trade crash safety for speed; a developer's data stays durable.
    durable: bool = True


class EmbeddedPostgres:
    """One PostgreSQL server process on a data directory it owns."""

    def __init__(self, config: PostgresConfig) -> None:
        self._config = config
        self._port = config.port or free_port(config.host)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = config.data_dir.parent / f"{config.data_dir.name}.log"

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@{self._config.host}:{self._port}/{database}"

    def start(self, timeout: float = 30.0) -> None:
        """Initialise the data directory if new, start, and wait until it accepts queries."""
        if self.running:
            return
        bin_dir, user = _binaries(), _run_as_user()
        data_dir = self._config.data_dir
        if not (data_dir / "PG_VERSION").exists():
            _initdb(bin_dir, data_dir, user, self._log_path)
        args = [
            str(bin_dir / "postgres"),
            "-D", str(data_dir),
            "-h", self._config.host,
            "-p", str(self._port),
            "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
        ]  # fmt: skip
        if not self._config.durable:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            args += ["-c", "full_page_writes=off"]
        deadline = time.monotonic() + timeout
        # After a hard kill, orphaned backends may hold the old shared memory
        # for a moment, so a refused start is retried until the deadline.
        while True:
            self._spawn(args, user)
            if self._wait_ready(deadline):
                return
            self._reap()
            if time.monotonic() >= deadline:
                raise PostgresStartError(
                    f"PostgreSQL did not start on port {self._port}; log:\n"
                    + log_tail(self._log_path)
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown: roll back open transactions, disconnect, exit."""
        if self._process is not None:
            stop_child(self._process, signal.SIGINT, timeout)
            self._process = None

    def kill(self) -> None:
        """Stop hard, as a crash would: SIGKILL to the postmaster and its backends."""
        if self._process is not None:
            signal_group(self._process, signal.SIGKILL)
            self._process.wait()
            self._process = None

    def create_database(self, name: str) -> str:
        """Create a database if missing and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists is None:
                conn.execute(
                    psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
                )
        return self.url(name)

    def create_login_role(self, name: str, member_of: str) -> None:
        """A login role in group role `member_of`, both created if missing.

        No password: this server trusts loopback connections. The group's privileges come from
        the migrations; creating it here lets the membership exist before they run.
        """
        group, login = psycopg.sql.Identifier(member_of), psycopg.sql.Identifier(name)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            existing = {
                row[0]
                for row in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [[member_of, name]]
                )
            }
            if member_of not in existing:
                conn.execute(psycopg.sql.SQL("CREATE ROLE {} NOLOGIN").format(group))
            if name not in existing:
                conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(login))
            conn.execute(psycopg.sql.SQL("GRANT {} TO {}").format(group, login))

    def _spawn(self, args: list[str], user: str | None) -> None:
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                dying_with_parent(args, user=user),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                with psycopg.connect(self.url(), connect_timeout=1) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def _reap(self) -> None:
        if self._process is not None:
            stop_child(self._process, signal.SIGKILL, 5)
            self._process = None


def _binaries() -> Path:
    # Located without importing pgserver, whose import touches the runtime
    # directory and warns when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresStartError(
            "the embedded PostgreSQL needs the `pgserver` package (make install)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _SYSTEM_USER], check=True)
    return _SYSTEM_USER


def _make_traversable(path: Path) -> None:
    """Let the unprivileged server user reach a data directory under root's folders."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXGRP | stat.S_IXOTH
        if wanted != mode:
            parent.chmod(wanted)


def _initdb(bin_dir: Path, data_dir: Path, user: str | None, log_path: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _make_traversable(data_dir)
        shutil.chown(data_dir, user, user)
        data_dir.chmod(0o700)
    _log.info("initialising PostgreSQL data directory %s", data_dir)
    with log_path.open("ab") as log:
        result = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--username=postgres",
                "--no-sync",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
            check=False,
        )
    if result.returncode != 0:
        raise PostgresStartError(f"initdb failed for {data_dir}; log:\n{log_tail(log_path)}")
