"""The wiring: use cases, servicers, the access gate and the gRPC server, from Adapters.

`compose` does no I/O and binds no port, so the whole server can be built on in-memory fakes
(tests/unit/test_in_process_server.py) exactly as production builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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

from pacs_grpc.api.annotation_servicer import AnnotationServicer
from pacs_grpc.api.gate import AccessGate
from pacs_grpc.api.health import HealthMonitor, HealthServicer
from pacs_grpc.api.identity_servicer import IdentityServicer
from pacs_grpc.api.interceptors import EdgeInterceptor
from pacs_grpc.api.mask_servicer import MaskServicer, MaskUseCaseSet
from pacs_grpc.api.metrics import Metrics
from pacs_grpc.api.rate_limits import CallLimits
from pacs_grpc.bootstrap.adapters import Adapters
from pacs_grpc.config import RateLimitSettings, Settings
from pacs_grpc.domain.annotation_rules import JsonLimits
from pacs_grpc.domain.masks import MaskLimits
from pacs_grpc.domain.pacs import PacsValidation
from pacs_grpc.services.annotation_history import AnnotationHistory
from pacs_grpc.services.annotations import AnnotationUseCases
from pacs_grpc.services.context import AuditedTransactions
from pacs_grpc.services.exports import ExportLimits, ExportUseCases
from pacs_grpc.services.identity import IdentityUseCases, UserDirectory
from pacs_grpc.services.imports import ImportLimits, ImportUseCases
from pacs_grpc.services.mask_completion import UploadCompletion
from pacs_grpc.services.mask_group_trash import MaskGroupTrash
from pacs_grpc.services.mask_groups import MaskGroupUseCases
from pacs_grpc.services.mask_push import MaskPush
from pacs_grpc.services.mask_urls import MaskUrlUseCases
from pacs_grpc.services.pacs_checks import PacsChecks
from pacs_grpc.services.ports import TxT
from pacs_grpc.services.reviews import ReviewUseCases
from pacs_grpc.services.sweeper import Sweeper
from pacs_grpc.services.watch import WatchAccess

SERVICE_NAMES: tuple[str, ...] = (
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    annotation_pb2.DESCRIPTOR.services_by_name["AnnotationService"].full_name,
    mask_pb2.DESCRIPTOR.services_by_name["MaskService"].full_name,
)

_MAX_METADATA_BYTES = 256 * 1024


@dataclass(frozen=True)
class Wiring:
    """The composed server, not yet listening, and the parts its life cycle drives."""

    server: aio.Server
    health: HealthServicer
    monitor: HealthMonitor
    gate: AccessGate
    sweeper: Sweeper[Any]
    metrics: Metrics


def compose(
    settings: Settings, adapters: Adapters[TxT], *, metrics: Metrics | None = None
) -> Wiring:
    """Every use case, servicer and edge part, joined to `adapters`; no I/O, no port bound."""
    metrics = metrics or Metrics()
    a = adapters
    pacs_checks = PacsChecks(
        a.pacs, PacsValidation(settings.pacs.validate), on_warning=metrics.pacs_warning
    )
    gate = AccessGate(
        a.verifier,
        a.read_token,
        UserDirectory(a.transactions, a.users, clock=a.clock),
        a.transactions,
        a.audit,
        admin_role=settings.oidc.admin_role,
        limits=_call_limits(settings.rate_limits, metrics),
    )
    transactions = AuditedTransactions(a.transactions, a.audit)
    identity = IdentityUseCases(
        transactions, a.users, a.projects, a.idempotency, max_page_size=settings.max_page_size
    )
    annotations = AnnotationUseCases(
        transactions,
        annotations=a.annotations,
        projects=a.projects,
        idempotency=a.idempotency,
        record_event=a.record_event,
        events=a.events,
        watch_access=WatchAccess(
            a.transactions,
            a.projects,
            recheck_seconds=settings.watch_recheck_seconds,
            clock=a.clock,
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
    history = AnnotationHistory(
        transactions,
        annotations=a.annotations,
        record_event=a.record_event,
        max_page_size=settings.max_page_size,
        clock=a.clock,
        trash_retention=timedelta(days=settings.trash_retention_days),
    )
    reviews = ReviewUseCases(
        transactions,
        annotations=a.annotations,
        groups=a.masks,
        masks=a.masks,
        record_event=a.record_event,
    )
    health = HealthServicer()
    server = _create_server(
        settings,
        health,
        gate,
        identity=IdentityServicer(identity),
        annotations=AnnotationServicer(annotations, history, reviews),
        masks=MaskServicer(
            _mask_use_cases(settings, a, transactions, pacs_checks, reviews), metrics
        ),
        metrics=metrics,
    )
    return Wiring(
        server=server,
        health=health,
        monitor=HealthMonitor(
            health,
            SERVICE_NAMES,
            a.required_probes,
            interval_seconds=settings.health_probe_interval_seconds,
            timeout_seconds=settings.health_probe_timeout_seconds,
            optional=a.optional_probes,
        ),
        gate=gate,
        sweeper=Sweeper(
            a.transactions,
            a.outbox,
            a.storage,
            interval_seconds=settings.sweeper_interval_seconds,
            upload_grace=timedelta(seconds=settings.upload_grace_seconds),
            trash=(a.annotations, a.masks),
            trash_retention=timedelta(days=settings.trash_retention_days),
            on_backlog=metrics.storage_backlog,
        ),
        metrics=metrics,
    )


def _mask_use_cases(
    settings: Settings,
    a: Adapters[TxT],
    transactions: AuditedTransactions[TxT],
    pacs_checks: PacsChecks,
    reviews: ReviewUseCases[TxT],
) -> MaskUseCaseSet:
    limits = _mask_limits(settings)
    return MaskUseCaseSet(
        groups=MaskGroupUseCases(
            transactions,
            masks=a.masks,
            annotations=a.annotations,
            idempotency=a.idempotency,
            database=a.transactions,
            limits=limits,
            pacs_checks=pacs_checks,
        ),
        urls=MaskUrlUseCases(
            transactions, masks=a.masks, storage=a.storage, limits=limits, clock=a.clock
        ),
        completion=UploadCompletion(
            transactions,
            masks=a.masks,
            storage=a.storage,
            database=a.transactions,
            limits=limits,
            pacs_checks=pacs_checks,
            clock=a.clock,
        ),
        push=MaskPush(
            transactions,
            masks=a.masks,
            storage=a.storage,
            database=a.transactions,
            limits=limits,
            pacs_checks=pacs_checks,
            clock=a.clock,
        ),
        imports=ImportUseCases(
            transactions,
            masks=a.masks,
            annotations=a.annotations,
            idempotency=a.idempotency,
            storage=a.storage,
            database=a.transactions,
            deletions=a.scheduled_deletions,
            segmentations=a.segmentations,
            clock=a.clock,
            limits=ImportLimits(
                max_bytes=settings.import_max_bytes,
                max_voxels=settings.import_max_voxels,
                upload_ttl=timedelta(seconds=settings.upload_url_ttl_seconds),
                max_ttl=timedelta(seconds=settings.max_url_ttl_seconds),
                max_concurrency=settings.import_max_concurrency,
            ),
            pacs=a.pacs,
            pacs_checks=pacs_checks,
        ),
        exports=ExportUseCases(
            transactions,
            masks=a.masks,
            exports=a.exports,
            idempotency=a.idempotency,
            storage=a.storage,
            database=a.transactions,
            pacs=a.pacs,
            write=a.write_segmentation,
            limits=ExportLimits(
                max_voxels=settings.export_max_voxels,
                max_concurrency=settings.export_max_concurrency,
                max_slice_bytes=settings.max_mask_bytes,
                download_ttl=timedelta(seconds=settings.download_url_ttl_seconds),
                max_ttl=timedelta(seconds=settings.max_url_ttl_seconds),
                max_page_size=settings.max_page_size,
                uid_root=settings.dicom_uid_root,
            ),
        ),
        reviews=reviews,
        trash=MaskGroupTrash(
            transactions,
            masks=a.masks,
            clock=a.clock,
            trash_retention=timedelta(days=settings.trash_retention_days),
        ),
    )


def _mask_limits(settings: Settings) -> MaskLimits:
    return MaskLimits(
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
    )


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
    health: HealthServicer,
    gate: AccessGate,
    *,
    identity: IdentityServicer,
    annotations: AnnotationServicer,
    masks: MaskServicer,
    metrics: Metrics,
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
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(identity, server)
    annotation_pb2_grpc.add_AnnotationServiceServicer_to_server(annotations, server)
    mask_pb2_grpc.add_MaskServiceServicer_to_server(masks, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
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
