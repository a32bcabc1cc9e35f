"""The composition root: the one place that builds and wires every part.

Nothing here runs at import. `create_application` does the start-up I/O
(opening the pool, checking the schema, binding the port) and returns an
Application that `serve` runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from datetime import timedelta

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pacs_grpc.adapters.auth.jwks import JwksCache, JwksUnavailableError
from pacs_grpc.adapters.auth.verifier import TokenVerifier, bearer_token
from pacs_grpc.adapters.dicom.export import write_segmentation
from pacs_grpc.adapters.pacs.dicomweb import DicomWebPacs, PacsProbe
from pacs_grpc.adapters.postgres import migrator
from pacs_grpc.adapters.postgres.annotation_event_feed import AnnotationEventFeed, record_event
from pacs_grpc.adapters.postgres.annotation_events import EventHub
from pacs_grpc.adapters.postgres.annotations import AnnotationRepository
from pacs_grpc.adapters.postgres.audit import AuditRepository
from pacs_grpc.adapters.postgres.database import Database
from pacs_grpc.adapters.postgres.exports import ExportRepository
from pacs_grpc.adapters.postgres.idempotency import IdempotencyRepository
from pacs_grpc.adapters.postgres.imports import ScheduledDeletionRepository
from pacs_grpc.adapters.postgres.masks import MaskRepository
from pacs_grpc.adapters.postgres.pool import PostgresProbe, create_pool
from pacs_grpc.adapters.postgres.projects import ProjectRepository
from pacs_grpc.adapters.postgres.roles import ServerRoleError, verify_server_role
from pacs_grpc.adapters.postgres.users import UserRepository
from pacs_grpc.adapters.storage.breaker import CircuitBreaker
from pacs_grpc.adapters.storage.objects import ObjectStore
from pacs_grpc.adapters.storage.s3 import StorageProbe
from pacs_grpc.api.annotation_servicer import AnnotationServicer
from pacs_grpc.api.gate import AccessGate
from pacs_grpc.api.health import HealthMonitor, HealthServicer
from pacs_grpc.api.identity_servicer import IdentityServicer
from pacs_grpc.api.interceptors import EdgeInterceptor
from pacs_grpc.api.mask_servicer import MaskServicer
from pacs_grpc.api.metrics import Metrics, MetricsEndpoint
from pacs_grpc.api.rate_limits import CallLimits
from pacs_grpc.config import PacsSettings, RateLimitSettings, Settings
from pacs_grpc.domain.annotation_rules import JsonLimits
from pacs_grpc.domain.pacs import PacsValidation
from pacs_grpc.services.annotations import AnnotationUseCases
from pacs_grpc.services.context import AuditedTransactions
from pacs_grpc.services.exports import ExportLimits, ExportUseCases
from pacs_grpc.services.identity import IdentityUseCases, UserDirectory
from pacs_grpc.services.imports import ImportLimits, ImportUseCases
from pacs_grpc.services.masks import MaskLimits, MaskUseCases
from pacs_grpc.services.pacs_checks import PacsChecks
from pacs_grpc.services.sweeper import Sweeper
from pacs_grpc.services.watch import WatchAccess

_log = logging.getLogger(__name__)

SERVICE_NAMES: tuple[str, ...] = (
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    annotation_pb2.DESCRIPTOR.services_by_name["AnnotationService"].full_name,
    mask_pb2.DESCRIPTOR.services_by_name["MaskService"].full_name,
)

# A health service name that follows the process, not its dependencies (liveness probes).
LIVENESS_SERVICE = "liveness"

_MAX_METADATA_BYTES = 256 * 1024


class StartupError(RuntimeError):
    """Start-up cannot go on; the message is one line for the operator."""


@dataclass
class Application:
    settings: Settings
    server: aio.Server
    port: int
    pool: AsyncConnectionPool
    health: HealthServicer
    monitor: HealthMonitor
    events: EventHub
    sweeper: Sweeper
    storage: ObjectStore
    metrics: Metrics
    # Listening from create_application on, when METRICS_PORT is set.
    metrics_endpoint: MetricsEndpoint | None = None
    # Its refusals' audit rows are written detached from their calls: drained before the pool.
    gate: AccessGate | None = None
    # The PACS link, when PACS_DICOMWEB_URL is set.
    pacs: DicomWebPacs | None = None

    async def start(self) -> None:
        await self.events.start()
        await self.sweeper.start()
        await self.monitor.start()
        # Answers while the process serves, whatever PostgreSQL and storage do: what the
        # Kubernetes liveness probe asks, so an outage does not restart every pod.
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        _log.info(
            "serving",
            extra={"port": self.port, "dependencies_ok": self.monitor.serving},
        )

    async def stop(self) -> None:
        """Drain in the order that loses no in-flight RPC.

        Health goes NOT_SERVING first so load balancers stop sending new
        calls; the server then refuses new RPCs and gives running ones the
        grace period; the pool closes only after the last RPC is done.
        """
        await self.monitor.stop()
        await self.health.enter_graceful_shutdown()
        # Watch streams never end on their own; ending them first lets the
        # grace period go to the calls that do, and tells viewers to resume
        # on another replica.
        await self.events.stop()
        await self.server.stop(self.settings.shutdown_grace_seconds)
        await self.sweeper.stop()
        if self.gate is not None:
            await self.gate.drain()
        await self.pool.close()
        self.storage.close()
        if self.pacs is not None:
            self.pacs.close()
        # Last, so the drain itself can be watched.
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.stop()
        _log.info("stopped")


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


async def create_application(settings: Settings) -> Application:
    pool = create_pool(settings.database)
    try:
        await pool.open(wait=True, timeout=settings.database.connect_timeout_seconds * 2)
    except PoolTimeout:
        await pool.close()
        raise StartupError("cannot connect to PostgreSQL at DATABASE_URL") from None
    try:
        await _check_database(settings.database.url)
    except StartupError:
        await pool.close()
        raise

    health_servicer = HealthServicer()
    metrics = Metrics()
    pacs, pacs_checks = _pacs(settings.pacs, metrics)
    storage_breaker, monitor = _health(settings, health_servicer, pool, pacs)
    keys = JwksCache(
        settings.oidc.jwks_url,
        cooldown_seconds=settings.oidc.jwks_cooldown_seconds,
        timeout_seconds=settings.oidc.jwks_timeout_seconds,
    )
    try:
        await keys.refresh()
    except JwksUnavailableError:
        # Not fatal: Keycloak may start after us. Tokens fail as "unknown
        # signing key" until a fetch succeeds (at most one per cooldown).
        _log.warning("signing keys not fetched at start-up; will retry on first token")
    metrics.watch_pool(pool.get_stats)
    database = Database(pool)
    audit = AuditRepository()
    users = UserRepository()
    gate = AccessGate(
        TokenVerifier(settings.oidc, keys),
        bearer_token,
        UserDirectory(database, users),
        database,
        audit,
        admin_role=settings.oidc.admin_role,
        limits=_call_limits(settings.rate_limits, metrics),
    )
    transactions = AuditedTransactions(database, audit)
    projects, idempotency = ProjectRepository(), IdempotencyRepository()
    identity = IdentityUseCases(
        transactions, users, projects, idempotency, max_page_size=settings.max_page_size
    )
    events = EventHub(
        # Its own session (LISTEN), bounded like the pool's connections.
        make_conninfo(
            settings.database.url, connect_timeout=settings.database.connect_timeout_seconds
        ),
        database,
        AnnotationEventFeed(),
        queue_size=settings.watch_queue_size,
        batch_budget_bytes=settings.list_page_budget_bytes,
    )
    annotation_repository = AnnotationRepository()
    annotations = AnnotationUseCases(
        transactions,
        annotations=annotation_repository,
        projects=projects,
        idempotency=idempotency,
        record_event=record_event,
        events=events,
        watch_access=WatchAccess(
            database, projects, recheck_seconds=settings.watch_recheck_seconds
        ),
        max_page_size=settings.max_page_size,
        json_limits=JsonLimits(
            max_bytes=settings.max_annotation_data_bytes,
            max_depth=settings.max_annotation_json_depth,
            max_elements=settings.max_annotation_json_values,
        ),
        list_budget_bytes=settings.list_page_budget_bytes,
        pacs_checks=pacs_checks,
    )
    storage = ObjectStore(
        settings.storage,
        public_endpoint=settings.storage.public_endpoint or None,
        breaker=storage_breaker,
        request_timeout_seconds=settings.storage.request_timeout_seconds,
    )
    masks = MaskUseCases(
        transactions,
        masks=MaskRepository(),
        annotations=annotation_repository,
        idempotency=idempotency,
        storage=storage,
        database=database,
        limits=MaskLimits(
            max_slices_per_call=settings.max_slices_per_request,
            max_mask_bytes=settings.max_mask_bytes,
            allowed_content_types=frozenset(settings.allowed_mask_content_types),
            upload_ttl=timedelta(seconds=settings.upload_url_ttl_seconds),
            download_ttl=timedelta(seconds=settings.download_url_ttl_seconds),
            max_ttl=timedelta(seconds=settings.max_url_ttl_seconds),
            max_page_size=settings.max_page_size,
            check_png_signature=settings.check_png_signature,
            allow_put_uploads=settings.allow_put_uploads,
            push_memory_per_process=settings.push_memory_budget_bytes,
            push_memory_per_user=settings.push_memory_budget_per_user_bytes,
        ),
        pacs_checks=pacs_checks,
    )
    sweeper = Sweeper(
        database,
        storage,
        interval_seconds=settings.sweeper_interval_seconds,
        upload_grace=timedelta(seconds=settings.upload_grace_seconds),
        on_backlog=metrics.storage_backlog,
    )
    server = _create_server(
        settings,
        health_servicer,
        gate,
        identity=IdentityServicer(identity),
        annotations=AnnotationServicer(annotations),
        masks=MaskServicer(
            masks,
            metrics,
            imports=_imports(
                settings,
                transactions=transactions,
                database=database,
                storage=storage,
                annotations=annotation_repository,
                idempotency=idempotency,
                pacs=pacs,
                pacs_checks=pacs_checks,
            ),
            exports=_exports(
                settings,
                transactions=transactions,
                idempotency=idempotency,
                storage=storage,
                database=database,
                pacs=pacs,
            ),
        ),
        metrics=metrics,
    )
    try:
        port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    except RuntimeError:
        port = 0
    if port == 0:
        await pool.close()
        raise StartupError(f"cannot listen on GRPC_HOST:GRPC_PORT ({settings.grpc_port} in use?)")
    endpoint = None
    if settings.metrics_port:
        endpoint = MetricsEndpoint(metrics, settings.metrics_host, settings.metrics_port)
        try:
            await endpoint.start()
        except OSError:
            await pool.close()
            raise StartupError(
                f"cannot listen on METRICS_HOST:METRICS_PORT ({settings.metrics_port} in use?)"
            ) from None
    return Application(
        settings, server, port, pool, health_servicer, monitor, events, sweeper, storage,
        metrics=metrics, metrics_endpoint=endpoint, gate=gate, pacs=pacs,
    )  # fmt: skip


def _exports(
    settings: Settings,
    *,
    transactions: AuditedTransactions,
    idempotency: IdempotencyRepository,
    storage: ObjectStore,
    database: Database,
    pacs: DicomWebPacs | None,
) -> ExportUseCases:
    return ExportUseCases(
        transactions,
        masks=MaskRepository(),
        exports=ExportRepository(),
        idempotency=idempotency,
        storage=storage,
        database=database,
        pacs=pacs,
        write=write_segmentation,
        limits=ExportLimits(
            max_voxels=settings.export_max_voxels,
            max_concurrency=settings.export_max_concurrency,
            max_slice_bytes=settings.max_mask_bytes,
            download_ttl=timedelta(seconds=settings.download_url_ttl_seconds),
            max_ttl=timedelta(seconds=settings.max_url_ttl_seconds),
            max_page_size=settings.max_page_size,
            uid_root=settings.dicom_uid_root,
        ),
    )


def _imports(
    settings: Settings,
    *,
    transactions: AuditedTransactions,
    database: Database,
    storage: ObjectStore,
    annotations: AnnotationRepository,
    idempotency: IdempotencyRepository,
    pacs: DicomWebPacs | None,
    pacs_checks: PacsChecks,
) -> ImportUseCases:
    return ImportUseCases(
        transactions,
        masks=MaskRepository(),
        annotations=annotations,
        idempotency=idempotency,
        storage=storage,
        database=database,
        deletions=ScheduledDeletionRepository(),
        limits=ImportLimits(
            max_bytes=settings.import_max_bytes,
            max_voxels=settings.import_max_voxels,
            upload_ttl=timedelta(seconds=settings.upload_url_ttl_seconds),
            max_ttl=timedelta(seconds=settings.max_url_ttl_seconds),
            max_concurrency=settings.import_max_concurrency,
        ),
        pacs=pacs,
        pacs_checks=pacs_checks,
    )


def _pacs(settings: PacsSettings, metrics: Metrics) -> tuple[DicomWebPacs | None, PacsChecks]:
    """The PACS link and what writes check through it; building them does no I/O (the health
    probe is the first to ask the PACS)."""
    pacs = DicomWebPacs(settings, on_request=metrics.pacs_request) if settings.configured else None
    checks = PacsChecks(pacs, PacsValidation(settings.validate), on_warning=metrics.pacs_warning)
    return pacs, checks


def _health(
    settings: Settings,
    servicer: HealthServicer,
    pool: AsyncConnectionPool,
    pacs: DicomWebPacs | None,
) -> tuple[CircuitBreaker, HealthMonitor]:
    """Storage's breaker (the storage probe reads it) and the monitor of every dependency."""
    storage_breaker = CircuitBreaker(
        failure_threshold=settings.storage.breaker_failures,
        open_seconds=settings.storage.breaker_open_seconds,
    )
    optional = []
    if pacs is not None:
        # Reported as "pacs" only: a PACS away fails the calls that need it, not the replica.
        optional.append(
            PacsProbe(
                pacs,
                settings.health_probe_timeout_seconds,
                interval_seconds=settings.pacs.probe_interval_seconds,
            )
        )
    monitor = HealthMonitor(
        servicer,
        SERVICE_NAMES,
        [
            PostgresProbe(pool, settings.health_probe_timeout_seconds),
            StorageProbe(settings.storage, settings.health_probe_timeout_seconds, storage_breaker),
        ],
        interval_seconds=settings.health_probe_interval_seconds,
        timeout_seconds=settings.health_probe_timeout_seconds,
        optional=optional,
    )
    return storage_breaker, monitor


def _call_limits(limits: RateLimitSettings, metrics: Metrics) -> CallLimits:
    return CallLimits(
        tickets_per_minute=limits.tickets_per_minute,
        completions_per_minute=limits.completions_per_minute,
        downloads_per_minute=limits.downloads_per_minute,
        pushes_per_minute=limits.pushes_per_minute,
        watches_per_minute=limits.watches_per_minute,
        max_streams_per_user=limits.max_streams_per_user,
        on_refused=metrics.rate_limited,
    )


def _create_server(
    settings: Settings,
    health_servicer: HealthServicer,
    gate: AccessGate,
    *,
    identity: IdentityServicer,
    annotations: AnnotationServicer,
    masks: MaskServicer,
    metrics: Metrics | None = None,
) -> aio.Server:
    server = aio.server(
        interceptors=[EdgeInterceptor(gate, metrics=metrics)],
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_receive_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_send_bytes),
            # Two servers must never share a port silently.
            ("grpc.so_reuseport", 0),
            # gRPC's default 16 KiB metadata limit would answer an oversized
            # token with RESOURCE_EXHAUSTED; with room here the verifier's own
            # OIDC_MAX_TOKEN_BYTES check answers UNAUTHENTICATED, as for any
            # other bad token.
            ("grpc.max_metadata_size", _MAX_METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", _MAX_METADATA_BYTES),
        ],
    )
    # The generated base servicers answer UNIMPLEMENTED until each service's
    # release replaces them with its own.
    # (Their stubs mark every method abstract, hence the ignores.)
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(identity, server)
    annotation_pb2_grpc.add_AnnotationServiceServicer_to_server(annotations, server)
    mask_pb2_grpc.add_MaskServiceServicer_to_server(masks, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
    return server


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    application = await create_application(settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await application.start()
    try:
        await stop_requested.wait()
        _log.info("stop requested; draining")
    finally:
        await application.stop()
