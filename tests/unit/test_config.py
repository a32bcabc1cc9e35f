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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"MAX_PAGE_SIZE": "0"}, "MAX_PAGE_SIZE must be between 1 and 10000, got 0"),
        ({"MAX_PAGE_SIZE": "many"}, "MAX_PAGE_SIZE must be an integer, got 'many'"),
        ({"UPLOAD_GRACE_SECONDS": "-1"}, "UPLOAD_GRACE_SECONDS must be at least 0, got -1"),
        (
            {"WATCH_RECHECK_SECONDS": "7"},
            "WATCH_RECHECK_SECONDS must be between 0.1 and 5, got 7.0",
        ),
        (
            {"OIDC_JWKS_COOLDOWN_SECONDS": "5"},
            "OIDC_JWKS_COOLDOWN_SECONDS must be at least 30, got 5.0",
        ),
        ({"SHUTDOWN_GRACE_SECONDS": "0"}, "SHUTDOWN_GRACE_SECONDS must be greater than 0, got 0.0"),
        ({"SHUTDOWN_GRACE_SECONDS": "inf"}, "SHUTDOWN_GRACE_SECONDS must be a number, got 'inf'"),
        ({"SHUTDOWN_GRACE_SECONDS": "nan"}, "SHUTDOWN_GRACE_SECONDS must be a number, got 'nan'"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got 'loud'"),
        (
            {"PACS_DICOMWEB_URL": "https://pacs/d", "PACS_USERNAME": "u"},
            "PACS_USERNAME and PACS_PASSWORD go together",
        ),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_allows(
    override: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**VALID, **override})
    assert str(raised.value) == message


def test_choices_and_words_read_in_any_case_and_separator() -> None:
    settings = Settings.from_env(
        {
            **VALID,
            "LOG_LEVEL": "debug",
            "PACS_DICOMWEB_URL": "https://pacs.internal/dicom-web/",
            "PACS_VALIDATE": "Warn",
            "ALLOWED_MASK_CONTENT_TYPES": "image/png, image/x-raw  image/jpeg",
        }
    )
    assert settings.log_level == "DEBUG"
    assert settings.pacs.validate == "warn"
    assert settings.pacs.dicomweb_url == "https://pacs.internal/dicom-web"
    assert settings.allowed_mask_content_types == ("image/png", "image/x-raw", "image/jpeg")


def test_pacs_validation_defaults_to_enforce_only_with_a_pacs() -> None:
    assert Settings.from_env(VALID).pacs.validate == "off"
    with_pacs = {**VALID, "PACS_DICOMWEB_URL": "https://pacs.internal/dicom-web"}
    assert Settings.from_env(with_pacs).pacs.validate == "enforce"
    with pytest.raises(ConfigError, match=r"^PACS_VALIDATE needs PACS_DICOMWEB_URL"):
        Settings.from_env({**VALID, "PACS_VALIDATE": "enforce"})


def test_unset_and_blank_variables_give_the_declared_defaults() -> None:
    blank = {name: "  " for name in ("MAX_PAGE_SIZE", "GRPC_REFLECTION", "S3_PUBLIC_ENDPOINT")}
    assert Settings.from_env({**VALID, **blank}) == Settings.from_env(VALID)
    defaults = Settings.from_env(VALID)
    assert defaults.max_page_size == Settings.__dataclass_fields__["max_page_size"].default
    assert defaults.storage.public_endpoint == ""
