"""`pacs-dev token` (the development stack's command) and `pacs-grpc`'s pointers to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest

from pacs_devstack import cli as dev_cli
from pacs_devstack.issuer import DEV_AUDIENCE, DEV_ISSUER, DevIssuer
from pacs_grpc import cli as server_cli


def _decode(issuer: DevIssuer, token: str) -> dict[str, Any]:
    key = jwt.PyJWKSet.from_dict(issuer.jwks())[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, key, algorithms=["RS256"], audience=DEV_AUDIENCE, issuer=DEV_ISSUER)


def test_token_prints_one_signed_by_the_stacks_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuer = DevIssuer(tmp_path / "issuer")
    argv = ["token", "--data-dir", str(tmp_path), "--user", "alice", "--realm-role", "pacs-admin"]
    assert dev_cli.main([*argv, "--ttl", "60"]) == 0
    claims = _decode(issuer, capsys.readouterr().out.strip())
    assert claims["preferred_username"] == "alice"
    assert claims["realm_access"]["roles"] == ["pacs-admin"]
    assert claims["exp"] - claims["iat"] == 60


def test_token_without_a_stack_says_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dev_cli.main(["token", "--data-dir", str(tmp_path), "--user", "alice"]) == 1
    assert "run `make run` first" in capsys.readouterr().err
    assert not (tmp_path / "issuer").exists()


@pytest.mark.parametrize("ttl", ["0", str(dev_cli.MAX_TOKEN_TTL_SECONDS + 1)])
def test_token_refuses_a_lifetime_out_of_range(
    ttl: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    DevIssuer(tmp_path / "issuer")
    assert dev_cli.main(["token", "--data-dir", str(tmp_path), "--user", "a", "--ttl", ttl]) == 2
    captured = capsys.readouterr()
    assert "--ttl must be between 1 and" in captured.err
    assert not captured.out


@pytest.mark.parametrize(("moved", "now"), [("dev", "pacs-dev run"), ("token", "pacs-dev token")])
def test_the_server_command_points_to_the_development_one(
    moved: str, now: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server_cli.main([moved, "--user", "alice"]) == 2
    assert f"`{now}`" in capsys.readouterr().err
