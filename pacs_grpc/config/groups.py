"""The groups of settings that Settings nests: database, storage, tokens, limits, the PACS.

Each field declares its variable, default, bounds and help once (see variables.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from pacs_grpc.config import kinds
from pacs_grpc.config.kinds import is_loopback_host
from pacs_grpc.config.variables import (
    ConfigError,
    Setting,
    Variable,
    choice,
    env,
    read_values,
    setting,
)
from pacs_grpc.domain.pacs import PacsValidation

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
# A server in a pod listens on, and is scraped from, every interface.
ALL_INTERFACES: Final = "0.0.0.0"  # noqa: S104
# The `iss` of the local stack's token issuer (pacs_devstack.issuer, devstack/). Its signing key
# lies in a file on a developer's disk, so `serve` trusts it only when told it is development.
DEV_ISSUER: Final = "http://localhost/realms/pacs-dev"


def per_minute(name: str, help: str) -> dict[str, Variable]:
    return env(name, f"{help}; 0 = no limit", minimum=0, maximum=1_000_000)


@dataclass(frozen=True)
class DatabaseSettings:
    """DATABASE_*: where the server connects (a member of pacs_app, never the schema owner), and
    the bounds on its pool and statements. `url` holds the password: it stays out of repr.
    """

    url: str = field(
        repr=False,
        metadata=env(
            "DATABASE_URL",
            "`postgresql://user:password@host:5432/db`, as a member of `pacs_app` "
            '(see "Database roles")',
            kind=kinds.DATABASE_URL,
        ),
    )
    pool_min_size: int = field(
        default=2,
        metadata=env(
            "DATABASE_POOL_MIN_SIZE", "connections kept open per server process", minimum=0
        ),
    )
    pool_max_size: int = field(
        default=20,
        metadata=env(
            "DATABASE_POOL_MAX_SIZE",
            "most connections per server process; not below `DATABASE_POOL_MIN_SIZE`",
            minimum=1,
        ),
    )
    pool_max_waiting: int = field(
        default=200,
        metadata=env(
            "DATABASE_POOL_MAX_WAITING",
            "callers queued for a connection before new ones fail fast with `UNAVAILABLE`",
            minimum=1,
        ),
    )
    pool_timeout_seconds: float = field(
        default=5.0,
        metadata=env("DATABASE_POOL_TIMEOUT_SECONDS", "longest wait for a pooled connection"),
    )
    pool_check_idle_seconds: float = field(
        default=5.0,
        metadata=env(
            "DATABASE_POOL_CHECK_IDLE_SECONDS",
            "a pooled connection not handed out for this long is pinged before it is; busier "
            "ones are not (a ping per call costs a round trip), except for this long after a "
            "connection was found dead",
            minimum=0,
        ),
    )
    statement_timeout_ms: int = field(
        default=10_000,
        metadata=env(
            "DATABASE_STATEMENT_TIMEOUT_MS",
            "server-side `statement_timeout` of every connection",
            minimum=100,
        ),
    )
    connect_timeout_seconds: int = field(
        default=5,
        metadata=env("DATABASE_CONNECT_TIMEOUT_SECONDS", "per connection attempt", minimum=1),
    )


# Read by `pacs-grpc migrate` only; the server never holds the schema owner's URL.
MIGRATION_DATABASE_URL: Final = Setting(
    Variable(
        "MIGRATION_DATABASE_URL",
        '`pacs-grpc migrate` only: the schema owner\'s URL (see "Database roles")',
        shown_default="`DATABASE_URL`",
    ),
    attribute="",
    kind=kinds.DATABASE_URL,
    default="",
    secret=True,
)


@dataclass(frozen=True)
class StorageSettings:
    """S3_*: the bucket (versioned), its credentials (out of repr), where clients reach it for
    signed URLs, and how long storage calls may take or fail before the breaker opens.
    """

    endpoint: str = field(
        metadata=env(
            "S3_ENDPOINT",
            "MinIO, S3 or SeaweedFS, where the server reaches it",
            kind=kinds.ENDPOINT_URL,
        )
    )
    access_key: str = field(repr=False, metadata=env("S3_ACCESS_KEY", "storage credentials"))
    secret_key: str = field(repr=False, metadata=env("S3_SECRET_KEY", "storage credentials"))
    bucket: str = field(
        default="pacs-masks",
        metadata=env(
            "S3_BUCKET",
            "must exist **with versioning enabled**; health stays NOT_SERVING until it does",
        ),
    )
    region: str = field(
        default="us-east-1",
        metadata=env(
            "S3_REGION", "given so presigning never asks the server for the bucket's region"
        ),
    )
    public_endpoint: str = field(
        default="",
        metadata=env(
            "S3_PUBLIC_ENDPOINT",
            "where clients reach storage, if not where the server does; URLs are signed for it",
            kind=kinds.ENDPOINT_URL,
            shown_default="`S3_ENDPOINT`",
        ),
    )
    breaker_failures: int = field(
        default=5,
        metadata=env(
            "S3_BREAKER_FAILURES",
            "after this many storage outages in a row, calls needing storage fail fast with "
            "`UNAVAILABLE` for `S3_BREAKER_OPEN_SECONDS`; then one trial call decides",
            minimum=1,
            maximum=1000,
        ),
    )
    breaker_open_seconds: float = field(
        default=10.0,
        metadata=env("S3_BREAKER_OPEN_SECONDS", "how long storage calls then fail fast"),
    )
    request_timeout_seconds: float = field(
        default=30.0,
        metadata=env(
            "S3_REQUEST_TIMEOUT_SECONDS",
            "bounds each storage request and each part of an upload (connecting at most 3 s)",
        ),
    )

    @property
    def secure(self) -> bool:
        return urlsplit(self.endpoint).scheme == "https"

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).netloc


@dataclass(frozen=True)
class OidcSettings:
    """How bearer tokens (Keycloak access tokens) are verified."""

    issuer: str = field(
        metadata=env(
            "OIDC_ISSUER",
            "the realm's issuer, e.g. `https://sso.example/realms/pacs`; `iss` must equal it",
        )
    )
    audience: str = field(
        metadata=env("OIDC_AUDIENCE", "this API's client id in Keycloak; `aud` must contain it")
    )
    jwks_url: str = field(
        metadata=env(
            "OIDC_JWKS_URL",
            "the realm's `.../protocol/openid-connect/certs`; the only source of keys. A "
            "redirect to `http://` from `https://`, or off loopback, is refused",
            kind=kinds.JWKS_URL,
        )
    )
    algorithms: tuple[str, ...] = field(
        default=("RS256",),
        metadata=env(
            "OIDC_ALGORITHMS",
            "accepted algorithms, asymmetric only (never taken from the token)",
            kind=kinds.ALGORITHMS,
        ),
    )
    accept_azp_as_audience: bool = field(
        default=True,
        metadata=env(
            "OIDC_ACCEPT_AZP_AS_AUDIENCE",
            'also accept tokens whose `azp` is the audience (Keycloak often puts "account" in '
            "`aud` and the client in `azp`)",
        ),
    )
    leeway_seconds: int = field(
        default=30,
        metadata=env(
            "OIDC_LEEWAY_SECONDS",
            "clock skew allowed on `exp`/`nbf`/`iat`",
            minimum=0,
            maximum=60,
        ),
    )
    jwks_cooldown_seconds: float = field(
        default=60.0,
        metadata=env(
            "OIDC_JWKS_COOLDOWN_SECONDS",
            "an unknown `kid` refetches the JWKS at most this often",
            minimum=30,
        ),
    )
    jwks_timeout_seconds: float = field(
        default=5.0, metadata=env("OIDC_JWKS_TIMEOUT_SECONDS", "JWKS fetch timeout")
    )
    max_token_bytes: int = field(
        default=16 * KIB,
        metadata=env("OIDC_MAX_TOKEN_BYTES", "longest token accepted", minimum=KIB, maximum=MIB),
    )
    admin_role: str = field(
        default="pacs-admin",
        metadata=env("PLATFORM_ADMIN_ROLE", "the realm role of platform administrators"),
    )
    allow_dev_issuer: bool = field(
        default=False,
        metadata=env(
            "PACS_DEV_MODE",
            "development only: lets `serve` trust the local stack's dev issuer (`OIDC_ISSUER` "
            f"`{DEV_ISSUER}`), which it otherwise refuses at start-up. `make run` and the "
            "tests set it",
        ),
    )


@dataclass(frozen=True)
class RateLimitSettings:
    """Per user (token `sub`) and per replica; 0 switches a limit off."""

    tickets_per_minute: int = field(
        default=120,
        metadata=per_minute(
            "RATE_LIMIT_TICKETS_PER_MINUTE",
            "`CreateUploadUrls` calls per user (token `sub`) a minute, per replica; a minute's "
            "worth may come at once",
        ),
    )
    completions_per_minute: int = field(
        default=120,
        metadata=per_minute(
            "RATE_LIMIT_COMPLETIONS_PER_MINUTE", "`CompleteUpload` calls per user a minute"
        ),
    )
    pushes_per_minute: int = field(
        default=60,
        metadata=per_minute(
            "RATE_LIMIT_PUSHES_PER_MINUTE", "`PushMasks` streams a user may open a minute"
        ),
    )
    watches_per_minute: int = field(
        default=60,
        metadata=per_minute(
            "RATE_LIMIT_WATCHES_PER_MINUTE", "`WatchAnnotations` streams a user may open a minute"
        ),
    )
    max_streams_per_user: int = field(
        default=16,
        metadata=env(
            "MAX_STREAMS_PER_USER",
            "`PushMasks` streams, and `WatchAnnotations` streams, one user may hold open at once "
            "per replica; 0 = no cap",
            minimum=0,
            maximum=10_000,
        ),
    )
    downloads_per_minute: int = field(
        default=300,
        metadata=per_minute(
            "RATE_LIMIT_DOWNLOADS_PER_MINUTE",
            "`CreateDownloadUrls` calls per user a minute (each signs up to a page of URLs)",
        ),
    )


_VALIDATIONS: Final = tuple(v.value for v in PacsValidation)


@dataclass(frozen=True)
class PacsSettings:
    """The hospital's PACS over DICOMweb; no URL, no PACS link."""

    dicomweb_url: str = field(
        default="",
        metadata=env(
            "PACS_DICOMWEB_URL",
            "the hospital PACS's DICOMweb root (QIDO-RS, WADO-RS, STOW-RS below it), e.g. "
            "`https://pacs.internal/dicom-web`. See [The PACS link](#the-pacs-link)",
            kind=kinds.SERVICE_URL,
            shown_default="unset (no PACS)",
        ),
    )
    validate: str = field(
        default=PacsValidation.OFF.value,
        metadata=env(
            "PACS_VALIDATE",
            "`enforce`: writes naming images the PACS lacks are `FAILED_PRECONDITION`, PACS "
            "down is `UNAVAILABLE`; `warn`: logged and counted "
            "(`pacs_pacs_validation_warnings`), then written; `off`: not asked",
            kind=choice(*_VALIDATIONS),
            shown_default=f"`{PacsValidation.ENFORCE.value}` with a URL, "
            f"else `{PacsValidation.OFF.value}`",
        ),
    )
    timeout_seconds: float = field(
        default=5.0,
        metadata=env(
            "PACS_TIMEOUT_SECONDS", "bounds each request to the PACS (connecting at most 3 s)"
        ),
    )
    username: str = field(
        default="", metadata=env("PACS_USERNAME", "basic auth to the PACS, with `PACS_PASSWORD`")
    )
    password: str = field(
        default="", repr=False, metadata=env("PACS_PASSWORD", "basic auth to the PACS")
    )
    token_url: str = field(
        default="",
        metadata=env(
            "PACS_TOKEN_URL",
            "or Keycloak client credentials: the realm's `.../protocol/openid-connect/token`, "
            "for a confidential client; tokens are refreshed ahead of expiry, and a token the "
            "PACS refuses is replaced once. With credentials, both URLs must be `https://` "
            "(except on loopback)",
            kind=kinds.SERVICE_URL,
        ),
    )
    client_id: str = field(
        default="", metadata=env("PACS_CLIENT_ID", "the confidential client, with `PACS_TOKEN_URL`")
    )
    client_secret: str = field(
        default="",
        repr=False,
        metadata=env("PACS_CLIENT_SECRET", "the confidential client's secret"),
    )
    token_scope: str = field(
        default="",
        metadata=env("PACS_TOKEN_SCOPE", "the `scope` asked for with client credentials"),
    )
    cache_seconds: float = field(
        default=300.0,
        metadata=env(
            "PACS_CACHE_SECONDS",
            'how long a "this exists" answer is remembered; "not found" is never remembered',
        ),
    )
    cache_size: int = field(
        default=10_000,
        metadata=env(
            "PACS_CACHE_SIZE",
            'for how many references a "this exists" answer is remembered (0: none)',
            minimum=0,
            maximum=10_000_000,
        ),
    )
    breaker_failures: int = field(
        default=5,
        metadata=env(
            "PACS_BREAKER_FAILURES",
            "after this many PACS outages in a row, calls needing the PACS fail fast for "
            "`PACS_BREAKER_OPEN_SECONDS`; then one trial call decides",
            minimum=1,
            maximum=1000,
        ),
    )
    breaker_open_seconds: float = field(
        default=10.0,
        metadata=env("PACS_BREAKER_OPEN_SECONDS", "how long PACS calls then fail fast"),
    )
    max_concurrency: int = field(
        default=8,
        metadata=env(
            "PACS_MAX_CONCURRENCY",
            "requests to the PACS in flight at once (its own worker threads)",
            minimum=1,
            maximum=256,
        ),
    )
    probe_interval_seconds: float = field(
        default=10.0,
        metadata=env(
            "PACS_PROBE_INTERVAL_SECONDS",
            "the health probe asks the PACS (one QIDO-RS `limit=1`) at most this often: the "
            "hospital's PACS is shared",
        ),
    )

    @property
    def configured(self) -> bool:
        return bool(self.dicomweb_url)

    @property
    def auth(self) -> str:
        if self.token_url:
            return "client_credentials"
        return "basic" if self.username else "none"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PacsSettings:
        url = setting(cls, "dicomweb_url").read(env)
        validate = PacsValidation.ENFORCE if url else PacsValidation.OFF
        pacs = cls(**read_values(cls, env, defaults={"validate": validate.value}))
        _check_pacs(pacs)
        return pacs


def _check_pacs(pacs: PacsSettings) -> None:
    if pacs.validate != PacsValidation.OFF.value and not pacs.configured:
        raise ConfigError("PACS_VALIDATE needs PACS_DICOMWEB_URL (or set PACS_VALIDATE=off)")
    if bool(pacs.username) != bool(pacs.password):
        raise ConfigError("PACS_USERNAME and PACS_PASSWORD go together")
    if pacs.token_url and pacs.username:
        raise ConfigError("set PACS_USERNAME or PACS_TOKEN_URL, not both")
    if pacs.token_url and not (pacs.client_id and pacs.client_secret):
        raise ConfigError("PACS_TOKEN_URL needs PACS_CLIENT_ID and PACS_CLIENT_SECRET")
    if (pacs.client_id or pacs.client_secret) and not pacs.token_url:
        raise ConfigError("PACS_CLIENT_ID and PACS_CLIENT_SECRET need PACS_TOKEN_URL")
    if pacs.auth != "none" and not pacs.configured:
        raise ConfigError("PACS credentials are set but PACS_DICOMWEB_URL is not")
    # Credentials (and the images' metadata) must not cross a network in clear text.
    for name, url in (("PACS_DICOMWEB_URL", pacs.dicomweb_url), ("PACS_TOKEN_URL", pacs.token_url)):
        parts = urlsplit(url)
        if (
            pacs.auth != "none"
            and parts.scheme == "http"
            and not is_loopback_host(parts.hostname or "")
        ):
            raise ConfigError(f"{name} must be https:// when PACS credentials are set")
