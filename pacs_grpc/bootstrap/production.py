"""The production adapters: PostgreSQL, S3-compatible storage, the PACS, the identity provider.

Building them is where start-up does its I/O, in this order: open the pool, check the schema
and the server's role, fetch the signing keys once. Each resource is registered on the
caller's exit stack as soon as it exists, so a start-up that fails midway closes exactly what
it opened; the registration order is the reverse of the order they close in at shutdown
(pool, then storage, then the PACS link).
"""

from __future__ import annotations

import contextlib
import logging

from psycopg.conninfo import make_conninfo
from psycopg_pool import PoolTimeout

from pacs_grpc.adapters.auth.jwks import JwksCache, JwksUnavailableError
from pacs_grpc.adapters.auth.verifier import TokenVerifier, bearer_token
from pacs_grpc.adapters.clock import SystemClock
from pacs_grpc.adapters.dicom.export import write_segmentation
from pacs_grpc.adapters.dicom.segmentation import SegmentationCodec
from pacs_grpc.adapters.pacs.dicomweb import DicomWebPacs, PacsProbe
from pacs_grpc.adapters.postgres import migrator
from pacs_grpc.adapters.postgres.annotation_event_feed import AnnotationEventFeed, record_event
from pacs_grpc.adapters.postgres.annotation_events import EventHub
from pacs_grpc.adapters.postgres.annotations import AnnotationRepository
from pacs_grpc.adapters.postgres.audit import AuditRepository
from pacs_grpc.adapters.postgres.database import Connection, Database
from pacs_grpc.adapters.postgres.exports import ExportRepository
from pacs_grpc.adapters.postgres.idempotency import IdempotencyRepository
from pacs_grpc.adapters.postgres.imports import ScheduledDeletionRepository
from pacs_grpc.adapters.postgres.masks import MaskRepository
from pacs_grpc.adapters.postgres.outbox import DeletionOutbox
from pacs_grpc.adapters.postgres.pool import PingWhenIdle, PostgresProbe, create_pool
from pacs_grpc.adapters.postgres.projects import ProjectRepository
from pacs_grpc.adapters.postgres.roles import ServerRoleError, verify_server_role
from pacs_grpc.adapters.postgres.users import UserRepository
from pacs_grpc.adapters.storage.breaker import CircuitBreaker
from pacs_grpc.adapters.storage.objects import ObjectStore
from pacs_grpc.adapters.storage.s3 import StorageProbe
from pacs_grpc.api.metrics import Metrics
from pacs_grpc.bootstrap.adapters import Adapters
from pacs_grpc.config import OidcSettings, Settings
from pacs_grpc.services.ports import Probe

_log = logging.getLogger("pacs_grpc.bootstrap")


class StartupError(RuntimeError):
    """Start-up cannot go on; the message is one line for the operator."""


async def production_adapters(
    settings: Settings, resources: contextlib.AsyncExitStack, *, metrics: Metrics
) -> Adapters[Connection]:
    """The real adapters, connected and checked; StartupError when one cannot be used."""
    # Neither does I/O here (the health probes are the first to call them).
    pacs = (
        DicomWebPacs(settings.pacs, on_request=metrics.pacs_request)
        if settings.pacs.configured
        else None
    )
    if pacs is not None:
        resources.callback(pacs.close)
    # Shared: storage calls open it, and the storage probe reports it.
    storage_breaker = CircuitBreaker(
        failure_threshold=settings.storage.breaker_failures,
        open_seconds=settings.storage.breaker_open_seconds,
    )
    storage = ObjectStore(
        settings.storage,
        public_endpoint=settings.storage.public_endpoint or None,
        breaker=storage_breaker,
        request_timeout_seconds=settings.storage.request_timeout_seconds,
    )
    resources.callback(storage.close)

    freshness = PingWhenIdle(settings.database.pool_check_idle_seconds)
    pool = create_pool(settings.database, freshness)
    resources.push_async_callback(pool.close)
    try:
        await pool.open(wait=True, timeout=settings.database.connect_timeout_seconds * 2)
    except PoolTimeout:
        raise StartupError("cannot connect to PostgreSQL at DATABASE_URL") from None
    await _check_database(settings.database.url)
    metrics.watch_pool(pool.get_stats)
    verifier = await _token_verifier(settings.oidc)

    database = Database(pool, on_connection_lost=freshness.distrust)
    timeout = settings.health_probe_timeout_seconds
    optional: list[Probe] = []
    if pacs is not None:
        # Reported as "pacs" only: a PACS away fails the calls that need it, not the replica.
        optional.append(
            PacsProbe(pacs, timeout, interval_seconds=settings.pacs.probe_interval_seconds)
        )
    return Adapters(
        transactions=database,
        users=UserRepository(),
        projects=ProjectRepository(),
        idempotency=IdempotencyRepository(),
        audit=AuditRepository(),
        annotations=AnnotationRepository(),
        record_event=record_event,
        masks=MaskRepository(),
        exports=ExportRepository(),
        scheduled_deletions=ScheduledDeletionRepository(),
        outbox=DeletionOutbox(),
        storage=storage,
        pacs=pacs,
        segmentations=SegmentationCodec(),
        write_segmentation=write_segmentation,
        clock=SystemClock(),
        events=EventHub(
            # Its own session (LISTEN), bounded like the pool's connections.
            make_conninfo(
                settings.database.url, connect_timeout=settings.database.connect_timeout_seconds
            ),
            database,
            AnnotationEventFeed(),
            queue_size=settings.watch_queue_size,
            batch_budget_bytes=settings.list_page_budget_bytes,
        ),
        verifier=verifier,
        read_token=bearer_token,
        required_probes=(
            PostgresProbe(pool, timeout),
            StorageProbe(settings.storage, timeout, storage_breaker),
        ),
        optional_probes=tuple(optional),
    )


async def _check_database(url: str) -> None:
    """The schema is current, and the server's role is pacs_app's, not its owner's."""
    try:
        await migrator.verify_schema(
            url, migrator.load_migrations(migrator.default_migrations_dir())
        )
    except migrator.MigrationError as error:
        raise StartupError(f"database schema: {error} (run `pacs-grpc migrate`)") from None
    try:
        await verify_server_role(url)
    except ServerRoleError as error:
        raise StartupError(f"database role: {error}") from None


async def _token_verifier(settings: OidcSettings) -> TokenVerifier:
    keys = JwksCache(
        settings.jwks_url,
        cooldown_seconds=settings.jwks_cooldown_seconds,
        timeout_seconds=settings.jwks_timeout_seconds,
    )
    try:
        await keys.refresh()
    except JwksUnavailableError:
        # Not fatal: Keycloak may start after us. Tokens fail as "unknown
        # signing key" until a fetch succeeds (at most one per cooldown).
        _log.warning("signing keys not fetched at start-up; will retry on first token")
    return TokenVerifier(settings, keys)
