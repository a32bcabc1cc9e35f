from __future__ import annotations

import pytest

from pacs_grpc.config import ConfigError, Settings

VALID = {
    "DATABASE_URL": "postgresql://app:db-password@db.internal:5432/pacs",
    "S3_ENDPOINT": "https://minio.internal:9000",
    "S3_ACCESS_KEY": "access",
    "S3_SECRET_KEY": "s3-secret-value",
    "OIDC_ISSUER": "https://keycloak.internal/realms/pacs",
    "OIDC_AUDIENCE": "pacs-api",
    "OIDC_JWKS_URL": "https://keycloak.internal/realms/pacs/protocol/openid-connect/certs",
}


def test_defaults_follow_the_documented_table() -> None:
    settings = Settings.from_env(VALID)
    assert settings.storage.bucket == "pacs-masks"
    assert settings.storage.region == "us-east-1"
    assert settings.storage.secure is True
    assert settings.storage.host == "minio.internal:9000"
    assert settings.upload_url_ttl_seconds == 600
    assert settings.max_url_ttl_seconds == 3600
    assert settings.grpc_port == 50051
    assert settings.reflection is True
    assert settings.oidc.algorithms == ("RS256",)


def test_repr_never_shows_secrets() -> None:
    text = repr(Settings.from_env(VALID))
    assert "db-password" not in text
    assert "s3-secret-value" not in text


@pytest.mark.parametrize(
    ("override", "variable"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"S3_ENDPOINT": "minio:9000"}, "S3_ENDPOINT"),
        ({"S3_ENDPOINT": "http://minio:9000/pacs-masks"}, "S3_ENDPOINT"),
        ({"S3_SECRET_KEY": ""}, "S3_SECRET_KEY"),
        ({"GRPC_PORT": "eighty"}, "GRPC_PORT"),
        ({"GRPC_PORT": "70000"}, "GRPC_PORT"),
        ({"GRPC_REFLECTION": "maybe"}, "GRPC_REFLECTION"),
        ({"SHUTDOWN_GRACE_SECONDS": "-1"}, "SHUTDOWN_GRACE_SECONDS"),
        ({"UPLOAD_URL_TTL_SECONDS": "7200"}, "UPLOAD_URL_TTL_SECONDS"),
        ({"DATABASE_POOL_MIN_SIZE": "50"}, "DATABASE_POOL_MIN_SIZE"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"OIDC_JWKS_URL": "file:///etc/keys"}, "OIDC_JWKS_URL"),
        ({"OIDC_ISSUER": ""}, "OIDC_ISSUER"),
        ({"OIDC_AUDIENCE": ""}, "OIDC_AUDIENCE"),
        ({"OIDC_ALGORITHMS": "HS256"}, "OIDC_ALGORITHMS"),
        ({"OIDC_ALGORITHMS": "none"}, "OIDC_ALGORITHMS"),
        ({"OIDC_LEEWAY_SECONDS": "300"}, "OIDC_LEEWAY_SECONDS"),
        ({"OIDC_JWKS_COOLDOWN_SECONDS": "5"}, "OIDC_JWKS_COOLDOWN_SECONDS"),
    ],
)
def test_invalid_value_names_the_variable(override: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**VALID, **override})
    message = str(raised.value)
    assert message.startswith(variable)
    assert "\n" not in message
    assert "db-password" not in message
    assert "s3-secret-value" not in message


def test_booleans_and_numbers_parse() -> None:
    settings = Settings.from_env(
        {
            **VALID,
            "GRPC_REFLECTION": "false",
            "GRPC_PORT": "0",
            "HEALTH_PROBE_INTERVAL_SECONDS": "0.5",
        }
    )
    assert settings.reflection is False
    assert settings.grpc_port == 0
    assert settings.health_probe_interval_seconds == 0.5
