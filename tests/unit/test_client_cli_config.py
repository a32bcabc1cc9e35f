"""The CLI's saved login, its environment overrides, the progress line and error lines."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import grpc
import pytest
from pacs.client import config
from pacs.client.cli import build_parser
from pacs.client.commands import describe
from pacs.client.progress import ProgressLine
from pacs.client.tokens import ClientCredentials, StaticToken, TokenError
from pacs.client.uploads import UploadError, UploadStats


def saved(tmp_path: Path, **overrides: object) -> dict[str, str]:
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    login = config.Login(
        server=str(overrides.get("server", "pacs.example:443")),
        insecure=bool(overrides.get("insecure", False)),
        token_source={"kind": "static", "token": "saved-token"},
    )
    config.save(login, environ)
    return environ


def test_the_saved_login_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    environ = saved(tmp_path)
    path = config.config_path(environ)
    assert path == tmp_path / "pacs" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert config.load(environ) == config.Login(
        "pacs.example:443", False, {"kind": "static", "token": "saved-token"}
    )
    assert not list(path.parent.glob(".config.*"))


def test_environment_variables_override_the_saved_login(tmp_path: Path) -> None:
    environ = saved(tmp_path, server="saved:1", insecure=True)
    login = config.resolve(environ=environ)
    assert (login.server, login.insecure) == ("saved:1", True)
    environ |= {"PACS_SERVER": "env:2", "PACS_TOKEN": "env-token"}
    login = config.resolve(environ=environ)
    # A plaintext choice saved for another server does not carry over.
    assert (login.server, login.insecure) == ("env:2", False)
    assert login.tokens().token() == "env-token"
    environ["PACS_INSECURE"] = "1"
    assert config.resolve(environ=environ).insecure is True
    assert config.resolve(server="flag:3", insecure=False, environ=environ).server == "flag:3"


def test_without_a_login_or_environment_the_cli_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="run 'pacs login'"):
        config.resolve(environ={"XDG_CONFIG_HOME": str(tmp_path)})


def test_environment_alone_is_enough(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path), "PACS_SERVER": "h:1", "PACS_TOKEN": "t"}
    login = config.resolve(environ=environ)
    assert isinstance(login.tokens(), StaticToken)


def test_client_credentials_are_rebuilt_from_the_saved_source(tmp_path: Path) -> None:
    source = {
        "kind": "client_credentials",
        "token_url": "https://sso.example/realms/pacs/protocol/openid-connect/token",
        "client_id": "seg",
        "client_secret": "hidden",
    }
    login = config.Login("h:1", False, source)
    tokens = login.tokens()
    assert isinstance(tokens, ClientCredentials)
    assert tokens.client_id == "seg"
    assert "hidden" not in repr(tokens)


def test_a_corrupt_file_is_a_config_error(tmp_path: Path) -> None:
    path = config.config_path({"XDG_CONFIG_HOME": str(tmp_path)})
    path.parent.mkdir(parents=True)
    path.write_text("[]")
    with pytest.raises(config.ConfigError, match="not a pacs login"):
        config.load({"XDG_CONFIG_HOME": str(tmp_path)})


def test_the_progress_line_redraws_at_most_ten_times_a_second_and_always_at_the_end() -> None:
    out = io.StringIO()
    now = [0.0]
    line = ProgressLine(out, "push", clock=lambda: now[0])
    line(0, 4)
    line(1, 4)  # too soon: skipped
    now[0] = 0.2
    line(2, 4)
    line(4, 4)  # the end is always drawn
    line.close()
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 3
    assert frames[1].startswith("push [" + "#" * 15 + "-" * 15 + "] 2/4 slices")
    assert frames[2] == "push [" + "#" * 30 + "] 4/4 slices\n"


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_errors_become_one_line() -> None:
    error = FakeRpcError(grpc.StatusCode.NOT_FOUND, "mask group\nnot found")
    assert describe(error) == "NOT_FOUND: mask group not found"
    assert describe(TokenError("token endpoint unreachable (X)")) == (
        "token endpoint unreachable (X)"
    )
    assert describe(FileNotFoundError(2, "No such file or directory", "masks/")) == (
        "No such file or directory: masks/"
    )
    failed = UploadError(4, {3: "HTTP 500"}, UploadStats(9, 90, 1, None))
    assert "\n" not in describe(failed)
    assert describe(failed).startswith("1 slice(s) not uploaded (slice 3: HTTP 500)")


def test_every_command_parses_and_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["masks", "pull", "12", "out", "--annotation", "3"])
    assert (args.run, args.group_id, args.annotation) == ("masks_pull", 12, 3)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["masks", "push", "dir"])
    assert exited.value.code == 2
    assert "--annotation" in capsys.readouterr().err
