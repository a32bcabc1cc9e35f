"""The local stack: PostgreSQL, S3, migrations and the server, in that order.

`pacs-grpc dev` (and so `make run`) and the test suite start it through this
same code. DATABASE_URL and S3_ENDPOINT, when set, replace the embedded
PostgreSQL and SeaweedFS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pacs_grpc.adapters.postgres import migrator
from pacs_grpc.devstack.issuer import DEV_AUDIENCE, DEV_ISSUER, DevIssuer
from pacs_grpc.devstack.ports import free_port
from pacs_grpc.devstack.postgres import EmbeddedPostgres, PostgresConfig
from pacs_grpc.devstack.seaweed import SeaweedConfig, SeaweedS3
from pacs_grpc.devstack.server import ServerProcess

# Local-only credentials for the embedded SeaweedFS, which listens on loopback.
DEV_S3_ACCESS_KEY = "pacs-dev"
DEV_S3_SECRET_KEY = "pacs-dev-secret"  # noqa: S105 - loopback development store
DEV_DATABASE = "pacs"


@dataclass
class StackConfig:
    data_dir: Path
    grpc_port: int = 0
    postgres_port: int = 0
    s3_port: int = 0
    issuer_port: int = 0
    # Tests trade crash safety for speed; a developer's data stays durable.
    durable: bool = True
    bucket: str = "pacs-masks"
    # Values from the caller's environment (DATABASE_URL, S3_*) win over the
    # embedded servers, and anything else here is passed to the server as is.
    environment: Mapping[str, str] = field(default_factory=dict)


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.postgres: EmbeddedPostgres | None = None
        self.s3: SeaweedS3 | None = None
        self.server: ServerProcess | None = None
        self.issuer: DevIssuer | None = None
        self.oidc: dict[str, str] = {}
        self.database_url = ""
        self.s3_endpoint = ""
        self.s3_access_key = ""
        self.s3_secret_key = ""

    def start_dependencies(self) -> None:
        env = self.config.environment
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        if env.get("DATABASE_URL"):
            self.database_url = env["DATABASE_URL"]
        else:
            self.postgres = EmbeddedPostgres(
                PostgresConfig(
                    data_dir=self.config.data_dir / "postgres",
                    port=self.config.postgres_port,
                    durable=self.config.durable,
                )
            )
            self.postgres.start()
            self.database_url = self.postgres.create_database(DEV_DATABASE)
        if env.get("S3_ENDPOINT"):
            self.s3_endpoint = env["S3_ENDPOINT"]
            self.s3_access_key = env.get("S3_ACCESS_KEY", "")
            self.s3_secret_key = env.get("S3_SECRET_KEY", "")
        else:
            self.s3 = SeaweedS3(
                SeaweedConfig(
                    data_dir=self.config.data_dir / "s3",
                    access_key=DEV_S3_ACCESS_KEY,
                    secret_key=DEV_S3_SECRET_KEY,
                    bucket=env.get("S3_BUCKET") or self.config.bucket,
                    s3_port=self.config.s3_port,
                )
            )
            self.s3.start()
            self.s3_endpoint = self.s3.endpoint
            self.s3_access_key, self.s3_secret_key = DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY

        if env.get("OIDC_JWKS_URL"):
            # A real Keycloak realm: the caller configured OIDC_* already.
            self.oidc = {}
        else:
            self.issuer = DevIssuer(self.config.data_dir / "issuer")
            jwks_url = self.issuer.serve(port=self.config.issuer_port)
            self.oidc = {
                "OIDC_ISSUER": DEV_ISSUER,
                "OIDC_AUDIENCE": DEV_AUDIENCE,
                "OIDC_JWKS_URL": jwks_url,
            }

    def migrate(self) -> list[migrator.Migration]:
        migrations = migrator.load_migrations(migrator.default_migrations_dir())
        return asyncio.run(migrator.migrate(self.database_url, migrations))

    def server_environment(self, grpc_port: int) -> dict[str, str]:
        env = {**os.environ, **self.config.environment, **self.oidc}
        env.update(
            DATABASE_URL=self.database_url,
            S3_ENDPOINT=self.s3_endpoint,
            S3_ACCESS_KEY=self.s3_access_key,
            S3_SECRET_KEY=self.s3_secret_key,
            S3_BUCKET=env.get("S3_BUCKET") or self.config.bucket,
            GRPC_PORT=str(grpc_port),
            GRPC_HOST="127.0.0.1",
        )
        return env

    def start_server(self, *, log_path: Path | None = None, timeout: float = 30.0) -> ServerProcess:
        port = self.config.grpc_port or free_port()
        self.server = ServerProcess(self.server_environment(port), port, log_path=log_path)
        self.server.start(timeout)
        return self.server

    def stop(self) -> None:
        """Stop everything this stack started, last started first."""
        if self.server is not None:
            with contextlib.suppress(RuntimeError):
                self.server.terminate()
            self.server = None
        if self.issuer is not None:
            self.issuer.stop()
        if self.s3 is not None:
            self.s3.stop()
        if self.postgres is not None:
            self.postgres.stop()


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "")
    return int(value) if value.isdigit() else default


def run_dev_stack(data_dir: str) -> int:
    """Start the stack in the foreground until Ctrl-C; what `make run` runs."""
    env = dict(os.environ)
    stack = LocalStack(
        StackConfig(
            data_dir=Path(data_dir).resolve(),
            grpc_port=_port(env, "GRPC_PORT", 50051),
            postgres_port=_port(env, "PACS_DEV_POSTGRES_PORT", 54329),
            s3_port=_port(env, "PACS_DEV_S3_PORT", 8333),
            issuer_port=_port(env, "PACS_DEV_ISSUER_PORT", 8099),
            environment=env,
        )
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        print("starting PostgreSQL and object storage ...", flush=True)
        stack.start_dependencies()
        applied = stack.migrate()
        print(f"migrations: {len(applied)} applied", flush=True)
        server = stack.start_server()
        _print_endpoints(stack, server)
        while not stop.is_set() and server.process.poll() is None:
            stop.wait(0.5)
        if server.process.poll() is not None:
            print(f"server exited with code {server.process.returncode}", flush=True)
            return 1
        print("\nstopping ...", flush=True)
        return 0
    finally:
        stack.stop()


def _print_endpoints(stack: LocalStack, server: ServerProcess) -> None:
    database = stack.database_url if stack.postgres else "DATABASE_URL (external)"
    print(
        "\nPACS Extension Server is up.\n"
        f"  gRPC           {server.address}   (reflection on: grpcurl -plaintext "
        f"{server.address} list)\n"
        f"  health         grpc.health.v1 on {server.address}\n"
        f"  PostgreSQL     {database}\n"
        f"  S3             {stack.s3_endpoint}  bucket {stack.config.bucket}\n"
        f"{_token_help(stack, server)}"
        "Press Ctrl-C to stop everything.\n",
        flush=True,
    )


def _token_help(stack: LocalStack, server: ServerProcess) -> str:
    if stack.issuer is None:
        return "  tokens         from your Keycloak realm (OIDC_* settings)\n"
    data_dir = stack.config.data_dir
    return (
        f"  dev issuer     {stack.oidc['OIDC_JWKS_URL']}\n"
        "Dev token (a platform administrator; drop --realm-role for a plain user):\n"
        f"  TOKEN=$(.venv/bin/pacs-grpc token --data-dir {data_dir} --user alice"
        " --realm-role pacs-admin)\n"
        f'  grpcurl -plaintext -H "authorization: Bearer $TOKEN" {server.address}'
        " pacs.v1.IdentityService/Login\n"
    )
