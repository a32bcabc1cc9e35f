"""The CLI's saved login: server address and where tokens come from.

Kept in `$XDG_CONFIG_HOME/pacs/config.json` (`~/.config/pacs/config.json`), readable by its
owner only, because it holds a token or a client secret. `PACS_SERVER`, `PACS_TOKEN` and
`PACS_INSECURE` override it (a CI job needs no file at all).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs.client.tokens import ClientCredentials, StaticToken, TokenProvider

STATIC = "static"
CLIENT_CREDENTIALS = "client_credentials"
_TRUE = {"1", "true", "yes", "on"}


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Login:
    server: str
    insecure: bool
    # {"kind": "static", "token": ...} or
    # {"kind": "client_credentials", "token_url": ..., "client_id": ..., "client_secret": ...}
    token_source: Mapping[str, str]

    def tokens(self) -> TokenProvider:
        source = self.token_source
        kind = source.get("kind")
        if kind == STATIC:
            return StaticToken(source.get("token", ""))
        if kind == CLIENT_CREDENTIALS:
            return ClientCredentials(
                source.get("token_url", ""),
                source.get("client_id", ""),
                source.get("client_secret", ""),
                scope=source.get("scope") or None,
            )
        raise ConfigError(f"unknown token source {kind!r} in {config_path()}; run 'pacs login'")


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pacs" / "config.json"


def load(environ: Mapping[str, str] | None = None) -> Login | None:
    path = config_path(environ)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path}: {type(error).__name__}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("token_source"), dict):
        raise ConfigError(f"{path} is not a pacs login; run 'pacs login' again")
    return Login(
        server=str(raw.get("server", "")),
        insecure=bool(raw.get("insecure", False)),
        token_source={str(k): str(v) for k, v in raw["token_source"].items()},
    )


def save(login: Login, environ: Mapping[str, str] | None = None) -> Path:
    """Write the login where only its owner can read it, replacing any earlier one whole."""
    path = config_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    document: dict[str, Any] = {
        "server": login.server,
        "insecure": login.insecure,
        "token_source": dict(login.token_source),
    }
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(document, file, indent=2)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def remove(environ: Mapping[str, str] | None = None) -> bool:
    path = config_path(environ)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def resolve(
    *,
    server: str | None = None,
    insecure: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> Login:
    """The login to use: command-line options, then PACS_* variables, then the saved file."""
    env = os.environ if environ is None else environ
    saved = load(env)
    token = env.get("PACS_TOKEN")
    source: Mapping[str, str] | None = saved.token_source if saved else None
    if token:
        source = {"kind": STATIC, "token": token}
    address = server or env.get("PACS_SERVER") or (saved.server if saved else "")
    if not address or source is None:
        raise ConfigError("not logged in: run 'pacs login', or set PACS_SERVER and PACS_TOKEN")
    if insecure is None:
        if "PACS_INSECURE" in env:
            insecure = env["PACS_INSECURE"].strip().lower() in _TRUE
        else:
            # A saved plaintext choice belongs to the saved server only.
            insecure = saved.insecure if saved and saved.server == address else False
    return Login(server=address, insecure=insecure, token_source=source)
