"""Where keys may come from, and which issuer `serve` may trust, checked at start-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pacs_devstack import issuer
from pacs_grpc.config import DEV_ISSUER, ConfigError, Settings, is_loopback_host

VALID = {
    "DATABASE_URL": "postgresql://app:db-password@db.internal:5432/pacs",
    "S3_ENDPOINT": "https://minio.internal:9000",
    "S3_ACCESS_KEY": "access",
    "S3_SECRET_KEY": "s3-secret-value",
    "OIDC_ISSUER": "https://keycloak.internal/realms/pacs",
    "OIDC_AUDIENCE": "pacs-api",
    "OIDC_JWKS_URL": "https://keycloak.internal/realms/pacs/protocol/openid-connect/certs",
}
DEV = {
    **VALID,
    "OIDC_ISSUER": DEV_ISSUER,
    "OIDC_JWKS_URL": "http://127.0.0.1:8099/realms/pacs-dev/protocol/openid-connect/certs",
}


@pytest.mark.parametrize(
    "url",
    [
        "http://keycloak.internal/realms/pacs/protocol/openid-connect/certs",
        "http://10.1.2.3:8080/certs",
        "http://localhost.example.org/certs",
        "http://[2001:db8::1]/certs",
    ],
)
def test_a_jwks_url_in_clear_text_off_loopback_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^OIDC_JWKS_URL must be https://"):
        Settings.from_env({**VALID, "OIDC_JWKS_URL": url})


@pytest.mark.parametrize(
    "url",
    [
        "https://keycloak.internal/realms/pacs/protocol/openid-connect/certs",
        "http://127.0.0.1:8099/certs",
        "http://127.8.9.10/certs",
        "http://localhost:8099/certs",
        "http://LOCALHOST/certs",
        "http://[::1]:8099/certs",
    ],
)
def test_https_or_loopback_http_is_accepted(url: str) -> None:
    assert Settings.from_env({**VALID, "OIDC_JWKS_URL": url}).oidc.jwks_url == url


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("128.0.0.1", False),
        ("0.0.0.0", False),
        ("sub.localhost", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_the_dev_issuer_is_refused_without_the_development_flag() -> None:
    with pytest.raises(ConfigError, match=r"^OIDC_ISSUER is the local stack's dev issuer"):
        Settings.from_env(DEV)
    with pytest.raises(ConfigError, match="PACS_DEV_MODE"):
        Settings.from_env({**DEV, "OIDC_ISSUER": DEV_ISSUER + "/", "PACS_DEV_MODE": "false"})


def test_the_dev_issuer_is_trusted_with_the_development_flag() -> None:
    settings = Settings.from_env({**DEV, "PACS_DEV_MODE": "true"})
    assert settings.oidc.issuer == DEV_ISSUER
    assert settings.oidc.allow_dev_issuer is True
    # The flag changes nothing for a real issuer.
    assert Settings.from_env({**VALID, "PACS_DEV_MODE": "true"}).oidc.issuer == VALID["OIDC_ISSUER"]
    assert Settings.from_env(VALID).oidc.allow_dev_issuer is False


def test_the_dev_issuer_module_signs_as_the_issuer_the_guard_knows() -> None:
    assert issuer.DEV_ISSUER == DEV_ISSUER


def test_serve_with_the_dev_issuer_and_no_flag_exits_with_one_clear_line() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PACS_DEV_MODE"}
    result = subprocess.run(
        [sys.executable, "-m", "pacs_grpc", "serve"],
        env={**env, **DEV},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "pacs-grpc: configuration error: OIDC_ISSUER is the local stack's dev issuer, whose "
        "signing key anyone with the key file can use; set PACS_DEV_MODE=true only for local "
        "development and tests"
    ]
