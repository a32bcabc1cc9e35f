"""`pacs-grpc`: serve, migrate, and run the local development stack."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from pacs_grpc import logs
from pacs_grpc.config import ConfigError, Settings, migration_database_url_from_env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacs-grpc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gRPC server (configuration from the environment)")
    commands.add_parser(
        "migrate",
        help="apply pending database migrations (MIGRATION_DATABASE_URL, else DATABASE_URL)",
    )
    dev = commands.add_parser(
        "dev", help="start the whole local stack: PostgreSQL, S3, migrations, server, Envoy"
    )
    dev.add_argument("--data-dir", default=".data", help="where local data lives (default .data)")
    token = commands.add_parser(
        "token", help="print a token from the local stack's dev issuer (never for production)"
    )
    token.add_argument("--user", required=True, help="the username (preferred_username)")
    token.add_argument(
        "--realm-role",
        action="append",
        default=[],
        metavar="ROLE",
        help="a realm role, e.g. pacs-admin; repeatable",
    )
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.add_argument("--client-id", default="pacs-cli", help="the azp claim (default pacs-cli)")
    token.add_argument("--data-dir", default=".data", help="the stack's data dir (default .data)")
    edge = commands.add_parser(
        "envoy-config",
        help="write the Envoy sidecar's configuration, descriptor set and OpenAPI document "
        "(settings from ENVOY_*, GRPC_PORT, CORS_ALLOWED_ORIGINS)",
    )
    edge.add_argument("--out", required=True, help="the directory to write them to")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve()
        if args.command == "migrate":
            return _migrate()
        if args.command == "token":
            return _token(args)
        if args.command == "envoy-config":
            return _envoy_config(args.out)
        return _dev(args.data_dir)
    except ConfigError as error:
        print(f"pacs-grpc: configuration error: {error}", file=sys.stderr)
        return 2


def _serve() -> int:
    from pacs_grpc.bootstrap import StartupError, serve

    settings = Settings.from_env(os.environ)
    logs.configure(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except StartupError as error:
        # One line for the operator; the cause was already logged where known.
        print(f"pacs-grpc: {error}", file=sys.stderr)
        return 1
    return 0


def _migrate() -> int:
    from pacs_grpc.adapters.postgres import migrator

    url = migration_database_url_from_env(os.environ)
    logs.configure(os.environ.get("LOG_LEVEL", "INFO").upper())
    try:
        applied = asyncio.run(
            migrator.migrate(url, migrator.load_migrations(migrator.default_migrations_dir()))
        )
    except migrator.MigrationError as error:
        print(f"pacs-grpc migrate: {error}", file=sys.stderr)
        return 1
    print(f"pacs-grpc migrate: {len(applied)} migration(s) applied")
    return 0


def _dev(data_dir: str) -> int:
    from pacs_grpc.devstack.stack import run_dev_stack

    return run_dev_stack(data_dir)


def _token(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pacs_grpc.devstack.issuer import DevIssuer

    if not 1 <= args.ttl <= 7 * 24 * 3600:
        print("pacs-grpc token: --ttl must be between 1 and 604800 seconds", file=sys.stderr)
        return 2
    key_dir = Path(args.data_dir) / "issuer"
    if not key_dir.exists():
        print(f"pacs-grpc token: no dev issuer in {key_dir}; run `make run` first", file=sys.stderr)
        return 1
    issuer = DevIssuer(key_dir)
    print(
        issuer.mint(
            args.user, realm_roles=args.realm_role, ttl_seconds=args.ttl, client_id=args.client_id
        )
    )
    return 0


def _envoy_config(out: str) -> int:
    from pathlib import Path

    from pacs_grpc.edge.envoy_config import EnvoyConfigError, EnvoySettings, write_envoy_config

    settings = EnvoySettings.from_env(os.environ)
    try:
        path = write_envoy_config(settings, Path(out))
    except (EnvoyConfigError, OSError) as error:
        print(f"pacs-grpc envoy-config: {error}", file=sys.stderr)
        return 1
    print(f"pacs-grpc envoy-config: wrote {path} (files expected in {settings.config_dir})")
    return 0
