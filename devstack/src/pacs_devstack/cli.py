"""`pacs-dev`: run the local development stack and mint its tokens (never for production)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pacs_grpc.config import ConfigError

MAX_TOKEN_TTL_SECONDS = 7 * 24 * 3600


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacs-dev", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="start the whole local stack: PostgreSQL, S3, migrations, server, Envoy"
    )
    run.add_argument("--data-dir", default=".data", help="where local data lives (default .data)")
    token = commands.add_parser("token", help="print a token from the local stack's dev issuer")
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
    args = parser.parse_args(argv)
    try:
        if args.command == "token":
            return _token(args)
        return _run(args.data_dir)
    except ConfigError as error:
        print(f"pacs-dev: configuration error: {error}", file=sys.stderr)
        return 2


def _run(data_dir: str) -> int:
    from pacs_devstack.stack import run_dev_stack

    return run_dev_stack(data_dir)


def _token(args: argparse.Namespace) -> int:
    from pacs_devstack.issuer import DevIssuer

    if not 1 <= args.ttl <= MAX_TOKEN_TTL_SECONDS:
        print(
            f"pacs-dev token: --ttl must be between 1 and {MAX_TOKEN_TTL_SECONDS} seconds",
            file=sys.stderr,
        )
        return 2
    key_dir = Path(args.data_dir) / "issuer"
    if not key_dir.exists():
        print(f"pacs-dev token: no dev issuer in {key_dir}; run `make run` first", file=sys.stderr)
        return 1
    issuer = DevIssuer(key_dir)
    print(
        issuer.mint(
            args.user, realm_roles=args.realm_role, ttl_seconds=args.ttl, client_id=args.client_id
        )
    )
    return 0
