"""The server's settings, read from environment variables only.

Each field declares its variable, default, bounds and help once (see variables.py);
`Settings.from_env` reads them and the README's configuration table is generated from
them (`python -m tools.settings_table`). A wrong value stops start-up with one line that
names the variable; secrets never appear in that line or in the settings' repr.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pacs_grpc.config import kinds
from pacs_grpc.config.groups import (
    ALL_INTERFACES,
    DEV_ISSUER,
    GIB,
    KIB,
    MIB,
    MIGRATION_DATABASE_URL,
    DatabaseSettings,
    OidcSettings,
    PacsSettings,
    RateLimitSettings,
    StorageSettings,
)
from pacs_grpc.config.variables import (
    ConfigError,
    Setting,
    all_settings,
    choice,
    env,
    read_group,
    read_values,
    setting,
)

# The most voxels a SEG export or import may hold by default: 1000 slices of 512 x 512, with
# 8 segments.
_SEG_VOXELS = 512 * 512 * 1000 * 8
_MAX_SEG_FILE_BYTES = 5 * GIB


@dataclass(frozen=True)
class Settings:
    """Every setting of the server: read once at start-up by `from_env`, never changed after.

    `from_env` raises ConfigError naming the variable for a value out of bounds or inconsistent
    with another (TTLs above MAX_URL_TTL_SECONDS, pool sizes, the dev issuer without
    PACS_DEV_MODE). Secrets stay out of its repr and of those errors.
    """

    database: DatabaseSettings
    storage: StorageSettings
    oidc: OidcSettings
    grpc_host: str = field(default=ALL_INTERFACES, metadata=env("GRPC_HOST", "listen address"))
    grpc_port: int = field(
        default=50051, metadata=env("GRPC_PORT", "listen port", minimum=0, maximum=65535)
    )
    grpc_max_receive_bytes: int = field(
        default=4 * MIB,
        metadata=env("GRPC_MAX_RECEIVE_BYTES", "largest message received", minimum=64 * KIB),
    )
    grpc_max_send_bytes: int = field(
        default=16 * MIB,
        metadata=env("GRPC_MAX_SEND_BYTES", "largest message sent", minimum=64 * KIB),
    )
    reflection: bool = field(
        default=True, metadata=env("GRPC_REFLECTION", "server reflection (v1alpha)")
    )
    shutdown_grace_seconds: float = field(
        default=20.0,
        metadata=env("SHUTDOWN_GRACE_SECONDS", "time in-flight RPCs get after SIGTERM"),
    )
    health_probe_interval_seconds: float = field(
        default=1.0,
        metadata=env(
            "HEALTH_PROBE_INTERVAL_SECONDS",
            "how often the dependencies behind grpc.health.v1 are probed",
        ),
    )
    health_probe_timeout_seconds: float = field(
        default=1.5, metadata=env("HEALTH_PROBE_TIMEOUT_SECONDS", "bounds each such probe")
    )
    upload_url_ttl_seconds: int = field(
        default=600,
        metadata=env(
            "UPLOAD_URL_TTL_SECONDS",
            "default upload URL lifetime; not above `MAX_URL_TTL_SECONDS`",
            minimum=1,
        ),
    )
    max_url_ttl_seconds: int = field(
        default=3600,
        metadata=env(
            "MAX_URL_TTL_SECONDS",
            "longest signed-URL lifetime a client may ask for",
            minimum=1,
        ),
    )
    download_url_ttl_seconds: int = field(
        default=300,
        metadata=env(
            "DOWNLOAD_URL_TTL_SECONDS",
            "default download URL lifetime; not above `MAX_URL_TTL_SECONDS`",
            minimum=1,
        ),
    )
    max_page_size: int = field(
        default=500,
        metadata=env(
            "MAX_PAGE_SIZE", "largest `page_size` of list calls", minimum=1, maximum=10_000
        ),
    )
    max_annotation_data_bytes: int = field(
        default=MIB,
        metadata=env(
            "MAX_ANNOTATION_DATA_BYTES",
            "largest `annotation_data` + `measurement_values`, as JSON",
            minimum=KIB,
            maximum=64 * MIB,
        ),
    )
    # What parsing an annotation's JSON builds is bounded by these two, not by its bytes.
    max_annotation_json_depth: int = field(
        default=32,
        metadata=env(
            "MAX_ANNOTATION_JSON_DEPTH",
            "deepest nesting each of `annotation_data` and `measurement_values` may hold. "
            "Protobuf itself refuses objects nested past about 33 (three message levels each), "
            "so a larger limit would never be the one that speaks",
            minimum=2,
            maximum=32,
        ),
    )
    max_annotation_json_values: int = field(
        default=100_000,
        metadata=env(
            "MAX_ANNOTATION_JSON_VALUES",
            "most values (objects, arrays and scalars) each of `annotation_data` and "
            "`measurement_values` may hold: what parsing them builds, which bytes alone do "
            "not bound",
            minimum=100,
            maximum=10_000_000,
        ),
    )
    list_page_budget_bytes: int = field(
        default=512 * KIB,
        metadata=env(
            "LIST_PAGE_BUDGET_BYTES",
            "a `ListAnnotations` page, and a `WatchAnnotations` catch-up batch, ends early past "
            "this much annotation JSON (at least one annotation each). JSON text is cheap next "
            "to what parsing it builds (objects, then protobuf: about 100 MiB for 2 MiB of "
            "`[{},...]`), so the default is small; a page of typical ~1 KiB annotations is "
            "never cut by it, and every page stays under a client's default 4 MiB receive limit",
            minimum=64 * KIB,
            maximum=256 * MIB,
        ),
    )
    max_slices_per_request: int = field(
        default=1000,
        metadata=env(
            "MAX_SLICES_PER_REQUEST",
            "slices per ticket, completion, download or push call; also the download URLs of "
            "one reply (the default and largest `page_size`)",
            minimum=1,
            maximum=10_000,
        ),
    )
    max_mask_bytes: int = field(
        default=64 * MIB,
        metadata=env("MAX_MASK_BYTES", "largest slice image", minimum=KIB, maximum=5 * GIB),
    )
    allowed_mask_content_types: tuple[str, ...] = field(
        default=("image/png",),
        metadata=env("ALLOWED_MASK_CONTENT_TYPES", "content types a slice may declare"),
    )
    check_png_signature: bool = field(
        default=False,
        metadata=env(
            "CHECK_PNG_SIGNATURE",
            "completion also checks that an `image/png` slice starts with the PNG signature "
            "(one ranged GET per slice, of the storage version that is checked and recorded, "
            "so it is opt-in); `PushMasks` checks its slices' first bytes as they arrive "
            "(`INVALID_ARGUMENT`)",
        ),
    )
    allow_put_uploads: bool = field(
        default=False,
        metadata=env(
            "ALLOW_PUT_UPLOADS",
            "also issue `UPLOAD_METHOD_PUT` tickets; without it a PUT ticket request is "
            "`INVALID_ARGUMENT` naming `method`. See [Upload tickets and storage]"
            "(#upload-tickets-and-storage) before turning it on",
        ),
    )
    push_memory_budget_bytes: int = field(
        default=256 * MIB,
        metadata=env(
            "PUSH_MEMORY_BUDGET_BYTES",
            "bytes of `PushMasks` slices in flight in one replica, counted by declared size (at "
            "most 12 MiB a slice). A slice over this budget or the user's waits for the "
            "stream's own slices, else `RESOURCE_EXHAUSTED` with a retry hint",
            minimum=16 * MIB,
        ),
    )
    push_memory_budget_per_user_bytes: int = field(
        default=128 * MIB,
        metadata=env(
            "PUSH_MEMORY_BUDGET_PER_USER_BYTES",
            "the same, for the slices of one user (token `sub`) in one replica",
            minimum=16 * MIB,
        ),
    )
    sweeper_interval_seconds: float = field(
        default=5.0, metadata=env("SWEEPER_INTERVAL_SECONDS", "how often storage is cleaned up")
    )
    trash_retention_days: int = field(
        default=30,
        metadata=env(
            "TRASH_RETENTION_DAYS",
            "how long a deleted annotation stays in the trash, where `UndeleteAnnotation` "
            "brings it back, before the sweeper purges it with its history and stored objects",
            minimum=1,
            maximum=3650,
        ),
    )
    upload_grace_seconds: int = field(
        default=600,
        metadata=env(
            "UPLOAD_GRACE_SECONDS",
            "how long after its expiry an unfinished ticket's object is left alone",
            minimum=0,
        ),
    )
    watch_queue_size: int = field(
        default=1000,
        metadata=env(
            "WATCH_QUEUE_SIZE",
            "events a `WatchAnnotations` subscriber may fall behind before its stream ends with "
            "`RESOURCE_EXHAUSTED` (it then resumes from its last event id)",
            minimum=10,
            maximum=100_000,
        ),
    )
    watch_recheck_seconds: float = field(
        default=2.0,
        metadata=env(
            "WATCH_RECHECK_SECONDS",
            "how often an open `WatchAnnotations` stream re-reads its caller's role in the "
            "project (one small query, no audit row): the longest a caller who lost access "
            "keeps receiving events",
            # Above 5 s, a removed member's open stream outlives the promised bound.
            minimum=0.1,
            maximum=5,
        ),
    )
    dicom_uid_root: str = field(
        default="",
        metadata=env(
            "DICOM_UID_ROOT",
            "root of the UIDs the server makes (exported SEGs' Series and SOP Instance UIDs): "
            "`<root>.<random digits>`",
            kind=kinds.UID_ROOT,
            shown_default="unset (`2.25.` + a UUID)",
        ),
    )
    export_max_concurrency: int = field(
        default=2,
        metadata=env(
            "EXPORT_MAX_CONCURRENCY",
            "`ExportMaskGroup`: SEG builds running at once per replica (each a worker thread "
            "and its memory; others wait)",
            minimum=1,
            maximum=64,
        ),
    )
    export_max_voxels: int = field(
        default=_SEG_VOXELS,
        metadata=env(
            "EXPORT_MAX_VOXELS",
            "`ExportMaskGroup`: the most voxels (slices x rows x columns x segments) one export "
            "may hold; above it `RESOURCE_EXHAUSTED`, checked before anything is read",
            minimum=1,
            maximum=2**40,
        ),
    )
    import_max_bytes: int = field(
        default=512 * MIB,
        metadata=env(
            "IMPORT_MAX_BYTES",
            "`ImportSegmentation`: the largest SEG file read (from the PACS, read no further; "
            "or a `CreateSegmentationUpload` ticket's `size_bytes`); above it "
            "`RESOURCE_EXHAUSTED`",
            minimum=KIB,
            maximum=_MAX_SEG_FILE_BYTES,
        ),
    )
    import_max_voxels: int = field(
        default=_SEG_VOXELS,
        metadata=env(
            "IMPORT_MAX_VOXELS",
            "`ImportSegmentation`: the most stored pixels (frames x rows x columns) one SEG may "
            "hold; above it `RESOURCE_EXHAUSTED`",
            minimum=1,
            maximum=2**40,
        ),
    )
    import_max_concurrency: int = field(
        default=2,
        metadata=env(
            "IMPORT_MAX_CONCURRENCY",
            "`ImportSegmentation`: imports decoding at once per replica",
            minimum=1,
            maximum=64,
        ),
    )
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    pacs: PacsSettings = field(default_factory=PacsSettings)
    metrics_host: str = field(
        default=ALL_INTERFACES,
        metadata=env("METRICS_HOST", "address of the metrics endpoint"),
    )
    metrics_port: int = field(
        default=0,
        metadata=env(
            "METRICS_PORT",
            "Prometheus `GET /metrics` over HTTP; 0 = not served (set 9464 in a pod). Opt-in, "
            "because it is one more port open on every interface; not `GRPC_PORT`",
            minimum=0,
            maximum=65535,
        ),
    )
    log_level: str = field(
        default="INFO",
        metadata=env(
            "LOG_LEVEL", "JSON lines on stderr", kind=choice("DEBUG", "INFO", "WARNING", "ERROR")
        ),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        settings = cls(
            database=read_group(DatabaseSettings, env),
            storage=read_group(StorageSettings, env),
            oidc=read_group(OidcSettings, env),
            rate_limits=read_group(RateLimitSettings, env),
            pacs=PacsSettings.from_env(env),
            **read_values(cls, env),
        )
        _check_consistency(settings)
        return settings


def documented_settings() -> Iterator[Setting]:
    """Every variable the README's configuration table lists, in its order."""
    server_url = setting(DatabaseSettings, "url")
    for each in all_settings(Settings):
        yield each
        if each == server_url:
            yield MIGRATION_DATABASE_URL


def migration_database_url_from_env(env: Mapping[str, str]) -> str:
    """Where `migrate` connects: MIGRATION_DATABASE_URL (the schema's owner), else DATABASE_URL.

    The server itself runs as pacs_app and refuses to run as the owner, so the two differ in
    production; the fallback keeps a one-role database usable for `migrate` alone.
    """
    owner_url: str = MIGRATION_DATABASE_URL.read(env)
    return owner_url or str(setting(DatabaseSettings, "url").read(env))


def _check_consistency(settings: Settings) -> None:
    if settings.upload_url_ttl_seconds > settings.max_url_ttl_seconds:
        raise ConfigError("UPLOAD_URL_TTL_SECONDS must not exceed MAX_URL_TTL_SECONDS")
    if settings.download_url_ttl_seconds > settings.max_url_ttl_seconds:
        raise ConfigError("DOWNLOAD_URL_TTL_SECONDS must not exceed MAX_URL_TTL_SECONDS")
    db = settings.database
    if db.pool_min_size > db.pool_max_size:
        raise ConfigError("DATABASE_POOL_MIN_SIZE must not exceed DATABASE_POOL_MAX_SIZE")
    if settings.oidc.issuer.rstrip("/") == DEV_ISSUER and not settings.oidc.allow_dev_issuer:
        raise ConfigError(
            "OIDC_ISSUER is the local stack's dev issuer, whose signing key anyone with the "
            "key file can use; set PACS_DEV_MODE=true only for local development and tests"
        )
    if settings.metrics_port and settings.metrics_port == settings.grpc_port:
        raise ConfigError("METRICS_PORT must differ from GRPC_PORT")
