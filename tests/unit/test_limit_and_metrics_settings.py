"""The settings of per-user limits and of the metrics endpoint."""

from __future__ import annotations

import pytest

from pacs_grpc.config import ConfigError, RateLimitSettings, Settings

VALID = {
    "DATABASE_URL": "postgresql://app:db-password@db.internal:5432/pacs",
    "S3_ENDPOINT": "https://minio.internal:9000",
    "S3_ACCESS_KEY": "access",
    "S3_SECRET_KEY": "s3-secret-value",
    "OIDC_ISSUER": "https://keycloak.internal/realms/pacs",
    "OIDC_AUDIENCE": "pacs-api",
    "OIDC_JWKS_URL": "https://keycloak.internal/realms/pacs/protocol/openid-connect/certs",
}


def test_defaults_limit_every_user_and_serve_no_metrics() -> None:
    settings = Settings.from_env(VALID)
    assert settings.rate_limits == RateLimitSettings(
        tickets_per_minute=120,
        completions_per_minute=120,
        pushes_per_minute=60,
        watches_per_minute=60,
        max_streams_per_user=16,
    )
    assert settings.metrics_port == 0
    assert settings.metrics_host == "0.0.0.0"


def test_limits_and_metrics_are_read_and_zero_switches_a_limit_off() -> None:
    settings = Settings.from_env(
        {
            **VALID,
            "RATE_LIMIT_TICKETS_PER_MINUTE": "0",
            "RATE_LIMIT_COMPLETIONS_PER_MINUTE": "30",
            "RATE_LIMIT_PUSHES_PER_MINUTE": "5",
            "RATE_LIMIT_WATCHES_PER_MINUTE": "7",
            "MAX_STREAMS_PER_USER": "0",
            "METRICS_PORT": "9464",
            "METRICS_HOST": "127.0.0.1",
        }
    )
    assert settings.rate_limits == RateLimitSettings(0, 30, 5, 7, 0)
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9464)


@pytest.mark.parametrize(
    ("override", "variable"),
    [
        ({"RATE_LIMIT_TICKETS_PER_MINUTE": "-1"}, "RATE_LIMIT_TICKETS_PER_MINUTE"),
        ({"RATE_LIMIT_COMPLETIONS_PER_MINUTE": "lots"}, "RATE_LIMIT_COMPLETIONS_PER_MINUTE"),
        ({"RATE_LIMIT_PUSHES_PER_MINUTE": "1.5"}, "RATE_LIMIT_PUSHES_PER_MINUTE"),
        ({"RATE_LIMIT_WATCHES_PER_MINUTE": "9999999"}, "RATE_LIMIT_WATCHES_PER_MINUTE"),
        ({"MAX_STREAMS_PER_USER": "-3"}, "MAX_STREAMS_PER_USER"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
        ({"METRICS_PORT": "metrics"}, "METRICS_PORT"),
        ({"METRICS_PORT": "50051"}, "METRICS_PORT"),
    ],
)
def test_invalid_value_names_the_variable(override: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**VALID, **override})
    assert variable in str(raised.value)
