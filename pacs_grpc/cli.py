"""`pacs-grpc`: serve, migrate, and render the Envoy sidecar's configuration."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from pacs_grpc import logs
from pacs_grpc.config import ConfigError, Settings, migration_database_url_from_env

# Commands that moved to the development-only `pacs-dev` (pacs-grpc-devstack).
MOVED_TO_PACS_DEV = {"dev": "pacs-dev run", "token": "pacs-dev token"}


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in MOVED_TO_PACS_DEV:
        print(f"pacs-grpc: `{words[0]}` is now `{MOVED_TO_PACS_DEV[words[0]]}`", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="pacs-grpc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gRPC server (configuration from the environment)")
    commands.add_parser(
        "migrate",
        help="apply pending database migrations (MIGRATION_DATABASE_URL, else DATABASE_URL)",
    )
    edge = commands.add_parser(
        "envoy-config",
        help="write the Envoy sidecar's configuration, descriptor set and OpenAPI document "
        "(settings from ENVOY_*, GRPC_PORT, CORS_ALLOWED_ORIGINS)",
    )
    edge.add_argument("--out", required=True, help="the directory to write them to")
    args = parser.parse_args(words)
    try:
        if args.command == "serve":
            return _serve()
        if args.command == "migrate":
            return _migrate()
        return _envoy_config(args.out)
    except ConfigError as error:
        print(f"pacs-grpc: configuration error: {error}", file=sys.stderr)
        return 2


def _serve() -> int:
    from pacs_grpc.bootstrap import StartupError, serve

    settings = Settings.from_env(os.environ)
    logs.configure(settings.log_level)
    try:
        if sys.platform == "win32":
            asyncio.run(serve(settings))
        else:
            # grpc.aio runs on any asyncio loop; uvloop's costs less CPU per call (POSIX only).
            import uvloop

            uvloop.run(serve(settings))
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
