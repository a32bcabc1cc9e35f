"""Stacks of a test module's own, for tests that stop what they run or must not share data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pacs_devstack.ports import free_port
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack, StackConfig


@contextmanager
def own_stack(
    data_dir: Path,
    environment: Mapping[str, str] | None = None,
    *,
    server_log: Path | None = None,
    durable: bool = False,
    pacs: bool = False,
) -> Iterator[LocalStack]:
    """PostgreSQL, storage and the issuer, migrated; with a server when `server_log` is given.

    `environment` is explicit, so DATABASE_URL / S3_ENDPOINT / PACS_DICOMWEB_URL from the
    caller's shell are not used: such a stack is the test's to stop and restart. With
    `pacs`, the stack starts an Orthanc of its own (stack.orthanc, stack.pacs_url) and
    links its server to it with PACS_VALIDATE=enforce; without, the server has no PACS.
    """
    stack = LocalStack(
        StackConfig(
            data_dir=data_dir, durable=durable, environment=dict(environment or {}), pacs=pacs
        )
    )
    try:
        stack.start_dependencies()
        stack.migrate()
        if server_log is not None:
            stack.start_server(log_path=server_log)
        yield stack
    finally:
        stack.stop()


def pacs_overrides(pacs_url: str, validate: str = "enforce") -> dict[str, str]:
    """Server settings linking it to the PACS at `pacs_url` (a DICOMweb root)."""
    return {"PACS_DICOMWEB_URL": pacs_url, "PACS_VALIDATE": validate}


class ServerStarter:
    """Extra servers on one stack's dependencies, each logging to its own file."""

    def __init__(self, stack: LocalStack, log_dir: Path, prefix: str) -> None:
        self._stack = stack
        self._log_dir = log_dir
        self._prefix = prefix
        self._started: list[ServerProcess] = []

    def start(self, overrides: Mapping[str, str] | None = None) -> ServerProcess:
        port = free_port()
        env = {**self._stack.server_environment(port), **(overrides or {})}
        server = ServerProcess(env, port, log_path=self._log_dir / f"{self._prefix}-{port}.log")
        server.start()
        self._started.append(server)
        return server

    def start_linked(
        self, pacs_url: str, overrides: Mapping[str, str] | None = None
    ) -> ServerProcess:
        """A server checking writes against the PACS at `pacs_url` (e.g. the `pacs_url`
        fixture's), on this stack's database and storage."""
        return self.start({**pacs_overrides(pacs_url), **(overrides or {})})

    def stop_all(self) -> None:
        for server in self._started:
            if server.process.poll() is None:
                server.terminate()
