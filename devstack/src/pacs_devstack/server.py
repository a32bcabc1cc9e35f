"""`pacs-grpc serve` as a child process, started and stopped like Kubernetes does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pacs_devstack.process import dying_with_parent, log_tail, stop_child


class ServerStartError(RuntimeError):
    """The server exited or never reported SERVING."""


class ServerProcess:
    def __init__(self, env: Mapping[str, str], port: int, *, log_path: Path | None = None) -> None:
        self._env = dict(env)
        self.port = port
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("server not started")
        return self._process

    def start(self, timeout: float = 30.0) -> None:
        log: IO[bytes] | None = self._log_path.open("ab") if self._log_path else None
        try:
            self._process = subprocess.Popen(
                dying_with_parent([sys.executable, "-m", "pacs_grpc", "serve"]),
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        if not self.wait_for_status(health_pb2.HealthCheckResponse.SERVING, timeout):
            self.kill()
            tail = log_tail(self._log_path) if self._log_path else "(see output above)"
            raise ServerStartError(f"pacs-grpc serve did not become SERVING; log:\n{tail}")

    def health(self, service: str = "", timeout: float = 1.0) -> int | None:
        """The health status the server reports now, or None if it does not answer."""
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.RpcError:
                return None
        return int(reply.status)

    def wait_for_status(self, status: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                return False
            if self.health() == status:
                return True
            time.sleep(0.1)
        return False

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as Kubernetes sends it, and wait for the exit code."""
        process = self.process
        stop_child(process, signal.SIGTERM, timeout)
        return process.returncode

    def kill(self) -> None:
        if self._process is not None:
            stop_child(self._process, signal.SIGKILL, 5)
