"""Configuration, read from environment variables only.

Every variable is listed in the README's configuration table. A wrong value
stops start-up with one line that names the variable; secrets never appear
in that line or in the settings' repr.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from pacs_grpc.domain.segments import new_uid

_T = TypeVar("_T")
MIB = 1024 * 1024
# The `iss` of the local stack's token issuer (pacs_grpc/devstack/issuer.py). Its signing key
# lies in a file on a developer's disk, so `serve` trusts it only when told it is development.
DEV_ISSUER = "http://localhost/realms/pacs-dev"


class ConfigError(ValueError):
    """A configuration variable is missing or invalid."""


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = field(repr=False)
    pool_min_size: int = 2
    pool_max_size: int = 20
    # Callers beyond this many queue no further and fail fast with UNAVAILABLE.
    pool_max_waiting: int = 200
    pool_timeout_seconds: float = 5.0
    statement_timeout_ms: int = 10_000
    connect_timeout_seconds: int = 5


@dataclass(frozen=True)
class StorageSettings:
    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    bucket: str = "pacs-masks"
    region: str = "us-east-1"
    # The endpoint clients reach storage at, when it differs from ours;
    # presigned URLs are signed for this host.
    public_endpoint: str = ""
    # Storage calls fail fast for breaker_open_seconds after this many outages in a row.
    breaker_failures: int = 5
    breaker_open_seconds: float = 10.0
    # Bounds each metadata call and each part of an upload.
    request_timeout_seconds: float = 30.0

    @property
    def secure(self) -> bool:
        return urlsplit(self.endpoint).scheme == "https"

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).netloc


@dataclass(frozen=True)
class OidcSettings:
    """How bearer tokens (Keycloak access tokens) are verified."""

    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...] = ("RS256",)
    # Keycloak often puts "account" in `aud` and the client in `azp`.
    accept_azp_as_audience: bool = True
    leeway_seconds: int = 30
    # An unknown `kid` refetches the JWKS at most once per cooldown.
    jwks_cooldown_seconds: float = 60.0
    jwks_timeout_seconds: float = 5.0
    max_token_bytes: int = 16 * 1024
    # The realm role that makes a caller a platform administrator.
    admin_role: str = "pacs-admin"
    # Trust DEV_ISSUER; only the local stack and the tests set it (PACS_DEV_MODE).
    allow_dev_issuer: bool = False


@dataclass(frozen=True)
class RateLimitSettings:
    """Per user (token `sub`) and per replica; 0 switches a limit off."""

    # Calls a minute; a full minute's worth may come at once.
    tickets_per_minute: int = 120
    completions_per_minute: int = 120
    pushes_per_minute: int = 60
    watches_per_minute: int = 60
    # Open PushMasks streams, and open WatchAnnotations streams, each.
    max_streams_per_user: int = 16
    # CreateDownloadUrls calls (each signs up to a page of URLs).
    downloads_per_minute: int = 300


@dataclass(frozen=True)
class PacsSettings:
    """The hospital's PACS over DICOMweb; no URL, no PACS link."""

    dicomweb_url: str = ""
    # enforce | warn | off (pacs_grpc.domain.pacs.PacsValidation's values).
    validate: str = "off"
    timeout_seconds: float = 5.0
    # Basic auth, or Keycloak client credentials; at most one of them.
    username: str = ""
    password: str = field(default="", repr=False)
    token_url: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    token_scope: str = ""
    # Positive answers ("this study exists") are kept this long, for this many references.
    cache_seconds: float = 300.0
    cache_size: int = 10_000
    breaker_failures: int = 5
    breaker_open_seconds: float = 10.0
    # Requests to the PACS in flight at once (worker threads).
    max_concurrency: int = 8
    # The health probe asks the PACS at most this often; the hospital's PACS is shared.
    probe_interval_seconds: float = 10.0

    @property
    def configured(self) -> bool:
        return bool(self.dicomweb_url)

    @property
    def auth(self) -> str:
        if self.token_url:
            return "client_credentials"
        return "basic" if self.username else "none"


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings
    storage: StorageSettings
    oidc: OidcSettings
    grpc_host: str = "0.0.0.0"  # noqa: S104 - a server in a pod listens on all interfaces
    grpc_port: int = 50051
    grpc_max_receive_bytes: int = 4 * MIB
    grpc_max_send_bytes: int = 16 * MIB
    reflection: bool = True
    shutdown_grace_seconds: float = 20.0
    health_probe_interval_seconds: float = 1.0
    health_probe_timeout_seconds: float = 1.5
    upload_url_ttl_seconds: int = 600
    max_url_ttl_seconds: int = 3600
    download_url_ttl_seconds: int = 300
    max_page_size: int = 500
    max_annotation_data_bytes: int = MIB
    # What parsing an annotation's JSON builds is bounded by these, not by its bytes.
    max_annotation_json_depth: int = 32
    max_annotation_json_values: int = 100_000
    # A list page (and a Watch catch-up batch) ends early past this much annotation JSON.
    list_page_budget_bytes: int = 512 * 1024
    max_slices_per_request: int = 1000
    max_mask_bytes: int = 64 * MIB
    allowed_mask_content_types: tuple[str, ...] = ("image/png",)
    # Costs a ranged GET per slice at completion, so it is opt-in.
    check_png_signature: bool = False
    # Presigned PUT tickets sign only the host: opt-in (see the README's "Upload tickets").
    allow_put_uploads: bool = False
    # Bytes of PushMasks slices in flight, per process and per user (token `sub`).
    push_memory_budget_bytes: int = 256 * MIB
    push_memory_budget_per_user_bytes: int = 128 * MIB
    sweeper_interval_seconds: float = 5.0
    # How long after its expiry an unfinished ticket's object is left alone.
    upload_grace_seconds: int = 600
    # Events a WatchAnnotations subscriber may fall behind before its stream
    # ends with RESOURCE_EXHAUSTED (it then resumes from its last event id).
    watch_queue_size: int = 1000
    # How often an open WatchAnnotations stream re-reads its caller's role in the project:
    # the longest a caller who lost access keeps receiving events (one small query each).
    watch_recheck_seconds: float = 2.0
    # New DICOM UIDs (exported SEGs) are <root>.<random digits>; empty: 2.25.<UUID>.
    dicom_uid_root: str = ""
    # ExportMaskGroup builds running at once (each a worker thread and its memory), and the
    # most voxels (slices x rows x columns x segments) one export may hold.
    export_max_concurrency: int = 2
    export_max_voxels: int = 512 * 512 * 1000 * 8
    # ImportSegmentation: the largest SEG file read (from the PACS or an upload), the most
    # voxels (frames x rows x columns) one may hold, and imports decoded at once.
    import_max_bytes: int = 512 * MIB
    import_max_voxels: int = 512 * 512 * 1000 * 8
    import_max_concurrency: int = 2
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    pacs: PacsSettings = field(default_factory=PacsSettings)
    # Prometheus metrics over HTTP; port 0 serves none. Opt-in, because it is one more port
    # open on every interface.
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    metrics_port: int = 0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        read = _Reader(env)
        settings = cls(
            database=DatabaseSettings(
                url=read.database_url("DATABASE_URL"),
                pool_min_size=read.integer("DATABASE_POOL_MIN_SIZE", 2, minimum=0),
                pool_max_size=read.integer("DATABASE_POOL_MAX_SIZE", 20, minimum=1),
                pool_max_waiting=read.integer("DATABASE_POOL_MAX_WAITING", 200, minimum=1),
                pool_timeout_seconds=read.number("DATABASE_POOL_TIMEOUT_SECONDS", 5.0),
                statement_timeout_ms=read.integer(
                    "DATABASE_STATEMENT_TIMEOUT_MS", 10_000, minimum=100
                ),
                connect_timeout_seconds=read.integer(
                    "DATABASE_CONNECT_TIMEOUT_SECONDS", 5, minimum=1
                ),
            ),
            storage=StorageSettings(
                endpoint=read.endpoint_url("S3_ENDPOINT"),
                access_key=read.text("S3_ACCESS_KEY"),
                secret_key=read.text("S3_SECRET_KEY"),
                bucket=read.text("S3_BUCKET", "pacs-masks"),
                region=read.text("S3_REGION", "us-east-1"),
                public_endpoint=read.optional_endpoint_url("S3_PUBLIC_ENDPOINT"),
                breaker_failures=read.integer("S3_BREAKER_FAILURES", 5, minimum=1, maximum=1000),
                breaker_open_seconds=read.number("S3_BREAKER_OPEN_SECONDS", 10.0),
                request_timeout_seconds=read.number("S3_REQUEST_TIMEOUT_SECONDS", 30.0),
            ),
            oidc=OidcSettings(
                issuer=read.text("OIDC_ISSUER"),
                audience=read.text("OIDC_AUDIENCE"),
                jwks_url=read.jwks_url("OIDC_JWKS_URL"),
                algorithms=read.algorithms("OIDC_ALGORITHMS"),
                accept_azp_as_audience=read.boolean("OIDC_ACCEPT_AZP_AS_AUDIENCE", True),
                leeway_seconds=read.integer("OIDC_LEEWAY_SECONDS", 30, minimum=0, maximum=60),
                jwks_cooldown_seconds=read.number("OIDC_JWKS_COOLDOWN_SECONDS", 60.0),
                jwks_timeout_seconds=read.number("OIDC_JWKS_TIMEOUT_SECONDS", 5.0),
                max_token_bytes=read.integer(
                    "OIDC_MAX_TOKEN_BYTES", 16 * 1024, minimum=1024, maximum=1024 * 1024
                ),
                admin_role=read.text("PLATFORM_ADMIN_ROLE", "pacs-admin"),
                allow_dev_issuer=read.boolean("PACS_DEV_MODE", False),
            ),
            grpc_host=read.text("GRPC_HOST", "0.0.0.0"),  # noqa: S104
            grpc_port=read.integer("GRPC_PORT", 50051, minimum=0, maximum=65535),
            grpc_max_receive_bytes=read.integer(
                "GRPC_MAX_RECEIVE_BYTES", 4 * MIB, minimum=64 * 1024
            ),
            grpc_max_send_bytes=read.integer("GRPC_MAX_SEND_BYTES", 16 * MIB, minimum=64 * 1024),
            reflection=read.boolean("GRPC_REFLECTION", True),
            shutdown_grace_seconds=read.number("SHUTDOWN_GRACE_SECONDS", 20.0),
            health_probe_interval_seconds=read.number("HEALTH_PROBE_INTERVAL_SECONDS", 1.0),
            health_probe_timeout_seconds=read.number("HEALTH_PROBE_TIMEOUT_SECONDS", 1.5),
            upload_url_ttl_seconds=read.integer("UPLOAD_URL_TTL_SECONDS", 600, minimum=1),
            max_url_ttl_seconds=read.integer("MAX_URL_TTL_SECONDS", 3600, minimum=1),
            download_url_ttl_seconds=read.integer("DOWNLOAD_URL_TTL_SECONDS", 300, minimum=1),
            max_page_size=read.integer("MAX_PAGE_SIZE", 500, minimum=1, maximum=10_000),
            max_annotation_data_bytes=read.integer(
                "MAX_ANNOTATION_DATA_BYTES", MIB, minimum=1024, maximum=64 * MIB
            ),
            max_annotation_json_depth=read.integer(
                # Protobuf itself refuses a Struct of objects nested past about 33 (three
                # message levels each), so a larger limit would never be the one that speaks.
                "MAX_ANNOTATION_JSON_DEPTH",
                32,
                minimum=2,
                maximum=32,
            ),
            max_annotation_json_values=read.integer(
                "MAX_ANNOTATION_JSON_VALUES", 100_000, minimum=100, maximum=10_000_000
            ),
            list_page_budget_bytes=read.integer(
                "LIST_PAGE_BUDGET_BYTES", 512 * 1024, minimum=64 * 1024, maximum=256 * MIB
            ),
            max_slices_per_request=read.integer(
                "MAX_SLICES_PER_REQUEST", 1000, minimum=1, maximum=10_000
            ),
            max_mask_bytes=read.integer(
                "MAX_MASK_BYTES", 64 * MIB, minimum=1024, maximum=5 * 1024 * MIB
            ),
            allowed_mask_content_types=read.words("ALLOWED_MASK_CONTENT_TYPES", ("image/png",)),
            check_png_signature=read.boolean("CHECK_PNG_SIGNATURE", False),
            allow_put_uploads=read.boolean("ALLOW_PUT_UPLOADS", False),
            push_memory_budget_bytes=read.integer(
                "PUSH_MEMORY_BUDGET_BYTES", 256 * MIB, minimum=16 * MIB
            ),
            push_memory_budget_per_user_bytes=read.integer(
                "PUSH_MEMORY_BUDGET_PER_USER_BYTES", 128 * MIB, minimum=16 * MIB
            ),
            sweeper_interval_seconds=read.number("SWEEPER_INTERVAL_SECONDS", 5.0),
            upload_grace_seconds=read.integer("UPLOAD_GRACE_SECONDS", 600, minimum=0),
            watch_queue_size=read.integer("WATCH_QUEUE_SIZE", 1000, minimum=10, maximum=100_000),
            watch_recheck_seconds=read.number("WATCH_RECHECK_SECONDS", 2.0),
            rate_limits=RateLimitSettings(
                tickets_per_minute=read.rate("RATE_LIMIT_TICKETS_PER_MINUTE", 120),
                completions_per_minute=read.rate("RATE_LIMIT_COMPLETIONS_PER_MINUTE", 120),
                downloads_per_minute=read.rate("RATE_LIMIT_DOWNLOADS_PER_MINUTE", 300),
                pushes_per_minute=read.rate("RATE_LIMIT_PUSHES_PER_MINUTE", 60),
                watches_per_minute=read.rate("RATE_LIMIT_WATCHES_PER_MINUTE", 60),
                max_streams_per_user=read.integer(
                    "MAX_STREAMS_PER_USER", 16, minimum=0, maximum=10_000
                ),
            ),
            dicom_uid_root=_uid_root(read.text("DICOM_UID_ROOT", "")),
            export_max_concurrency=read.integer("EXPORT_MAX_CONCURRENCY", 2, minimum=1, maximum=64),
            export_max_voxels=read.integer(
                "EXPORT_MAX_VOXELS", 512 * 512 * 1000 * 8, minimum=1, maximum=2**40
            ),
            import_max_bytes=read.integer(
                "IMPORT_MAX_BYTES", 512 * MIB, minimum=1024, maximum=5 * 1024 * MIB
            ),
            import_max_voxels=read.integer(
                "IMPORT_MAX_VOXELS", 512 * 512 * 1000 * 8, minimum=1, maximum=2**40
            ),
            import_max_concurrency=read.integer("IMPORT_MAX_CONCURRENCY", 2, minimum=1, maximum=64),
            pacs=_pacs_settings(read),
            metrics_host=read.text("METRICS_HOST", "0.0.0.0"),  # noqa: S104
            metrics_port=read.integer("METRICS_PORT", 0, minimum=0, maximum=65535),
            log_level=read.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        )
        _check_consistency(settings)
        return settings


def _uid_root(root: str) -> str:
    try:
        new_uid(root)
    except ValueError as error:
        raise ConfigError(f"DICOM_UID_ROOT: {error}") from None
    return root


def _pacs_settings(read: _Reader) -> PacsSettings:
    url = read.optional_service_url("PACS_DICOMWEB_URL")
    validate = read.choice(
        "PACS_VALIDATE", "ENFORCE" if url else "OFF", ("ENFORCE", "WARN", "OFF")
    ).lower()
    if validate != "off" and not url:
        raise ConfigError("PACS_VALIDATE needs PACS_DICOMWEB_URL (or set PACS_VALIDATE=off)")
    settings = PacsSettings(
        dicomweb_url=url,
        validate=validate,
        timeout_seconds=read.number("PACS_TIMEOUT_SECONDS", 5.0),
        username=read.text("PACS_USERNAME", ""),
        password=read.text("PACS_PASSWORD", ""),
        token_url=read.optional_service_url("PACS_TOKEN_URL"),
        client_id=read.text("PACS_CLIENT_ID", ""),
        client_secret=read.text("PACS_CLIENT_SECRET", ""),
        token_scope=read.text("PACS_TOKEN_SCOPE", ""),
        cache_seconds=read.number("PACS_CACHE_SECONDS", 300.0),
        cache_size=read.integer("PACS_CACHE_SIZE", 10_000, minimum=0, maximum=10_000_000),
        breaker_failures=read.integer("PACS_BREAKER_FAILURES", 5, minimum=1, maximum=1000),
        breaker_open_seconds=read.number("PACS_BREAKER_OPEN_SECONDS", 10.0),
        max_concurrency=read.integer("PACS_MAX_CONCURRENCY", 8, minimum=1, maximum=256),
        probe_interval_seconds=read.number("PACS_PROBE_INTERVAL_SECONDS", 10.0),
    )
    _check_pacs(settings)
    return settings


def _check_pacs(pacs: PacsSettings) -> None:
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


def migration_database_url_from_env(env: Mapping[str, str]) -> str:
    """Where `migrate` connects: MIGRATION_DATABASE_URL (the schema's owner), else DATABASE_URL.

    The server itself runs as pacs_app and refuses to run as the owner, so the two differ in
    production; the fallback keeps a one-role database usable for `migrate` alone.
    """
    read = _Reader(env)
    if env.get("MIGRATION_DATABASE_URL", "").strip():
        return read.database_url("MIGRATION_DATABASE_URL")
    return read.database_url("DATABASE_URL")


def _check_consistency(settings: Settings) -> None:
    if settings.upload_url_ttl_seconds > settings.max_url_ttl_seconds:
        raise ConfigError("UPLOAD_URL_TTL_SECONDS must not exceed MAX_URL_TTL_SECONDS")
    if settings.download_url_ttl_seconds > settings.max_url_ttl_seconds:
        raise ConfigError("DOWNLOAD_URL_TTL_SECONDS must not exceed MAX_URL_TTL_SECONDS")
    db = settings.database
    if db.pool_min_size > db.pool_max_size:
        raise ConfigError("DATABASE_POOL_MIN_SIZE must not exceed DATABASE_POOL_MAX_SIZE")
    if settings.oidc.jwks_cooldown_seconds < 30:
        raise ConfigError("OIDC_JWKS_COOLDOWN_SECONDS must be at least 30")
    if settings.oidc.issuer.rstrip("/") == DEV_ISSUER and not settings.oidc.allow_dev_issuer:
        raise ConfigError(
            "OIDC_ISSUER is the local stack's dev issuer, whose signing key anyone with the "
            "key file can use; set PACS_DEV_MODE=true only for local development and tests"
        )
    if not 0.1 <= settings.watch_recheck_seconds <= 5:
        # Above 5 s, a removed member's open stream outlives the promised bound.
        raise ConfigError("WATCH_RECHECK_SECONDS must be between 0.1 and 5")
    if settings.metrics_port and settings.metrics_port == settings.grpc_port:
        raise ConfigError("METRICS_PORT must differ from GRPC_PORT")


class _Reader:
    """Parses one variable at a time and names it in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _get(self, name: str, default: str | None) -> str:
        value = self._env.get(name, "").strip()
        if value:
            return value
        if default is None:
            raise ConfigError(f"{name} is required but not set")
        return default

    def _parse(self, name: str, default: _T, parse: Callable[[str], _T], expected: str) -> _T:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {expected}, got {raw!r}") from None

    def text(self, name: str, default: str | None = None) -> str:
        return self._get(name, default)

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._parse(name, default, int, "an integer")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{name} must be {bounds}, got {value}")
        return value

    def rate(self, name: str, default: int) -> int:
        """Calls a minute; 0 means no limit."""
        return self.integer(name, default, minimum=0, maximum=1_000_000)

    def number(self, name: str, default: float) -> float:
        value = self._parse(name, default, float, "a number")
        if not value > 0:
            raise ConfigError(f"{name} must be greater than 0, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}

        def parse(raw: str) -> bool:
            return words[raw.lower()] if raw.lower() in words else _raise_value_error()

        return self._parse(name, default, parse, "true or false")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(name, default).upper()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def words(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._env.get(name, "").strip()
        return tuple(w for w in raw.replace(",", " ").split() if w) if raw else default

    def endpoint_url(self, name: str) -> str:
        value = self._get(name, None)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            # The value may carry credentials, so only its shape is reported.
            raise ConfigError(f"{name} must be an http:// or https:// URL with a host")
        if parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"{name} must not have a path or query (the bucket is S3_BUCKET)")
        return f"{parts.scheme}://{parts.netloc}"

    def optional_endpoint_url(self, name: str) -> str:
        return self.endpoint_url(name) if self._env.get(name, "").strip() else ""

    def optional_service_url(self, name: str) -> str:
        """An http(s) URL that may have a path; "" when unset. Shown only by its shape."""
        value = self._env.get(name, "").strip()
        if not value:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{name} must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"{name} must not carry a query, fragment or credentials")
        return value.rstrip("/")

    def jwks_url(self, name: str) -> str:
        value = self._get(name, None)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{name} must be an http:// or https:// URL")
        # Keys fetched in clear text could be swapped on the way, and then any token verifies.
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            raise ConfigError(f"{name} must be https:// (http:// only on loopback)")
        return value

    def algorithms(self, name: str) -> tuple[str, ...]:
        value = self.words(name, ("RS256",))
        # Asymmetric only: an HMAC algorithm would make the public JWKS a secret.
        allowed = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
        unknown = [a for a in value if a not in allowed]
        if unknown or not value:
            raise ConfigError(f"{name} must list algorithms among {', '.join(sorted(allowed))}")
        return value

    def database_url(self, name: str) -> str:
        value = self._get(name, None)
        if urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"{name} must be a postgresql:// URL")
        return value


def _raise_value_error() -> bool:
    raise ValueError


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: a host no packet to which leaves the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
