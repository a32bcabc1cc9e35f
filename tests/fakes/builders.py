"""Use cases wired to in-memory fakes, and calls made the way the access gate makes them.

Every unit test builds its use cases here, so a constructor change touches this file only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pacs_grpc.api.access import ACCESS_BY_METHOD, audit_resource_type
from pacs_grpc.domain.annotation_rules import JsonLimits
from pacs_grpc.domain.audit import AuditTrail
from pacs_grpc.domain.identity import Caller, Principal, User
from pacs_grpc.services.annotation_history import AnnotationHistory
from pacs_grpc.services.annotations import AnnotationUseCases, NewAnnotation
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.identity import IdentityUseCases, UserDirectory
from pacs_grpc.services.watch import WatchAccess
from tests.fakes.annotations import FakeAnnotationStore, FakeEventRecorder, FakeEventSource
from tests.fakes.clock import FakeClock
from tests.fakes.database import FakeDatabase, FakeTransactions, FakeTx
from tests.fakes.identity import (
    FakeAuditStore,
    FakeIdempotencyStore,
    FakeProjectStore,
    FakeUserStore,
)

MAX_PAGE_SIZE = 100
# Long enough that no recheck runs while a unit test holds a subscription.
WATCH_RECHECK_SECONDS = 3_600.0


@dataclass
class World:
    """One fake database and every fake port over it."""

    clock: FakeClock
    db: FakeDatabase
    transactions: FakeTransactions
    users: FakeUserStore
    projects: FakeProjectStore
    idempotency: FakeIdempotencyStore
    audit: FakeAuditStore
    annotations: FakeAnnotationStore
    record_event: FakeEventRecorder
    events: FakeEventSource


def world() -> World:
    clock = FakeClock()
    db = FakeDatabase(clock)
    return World(
        clock=clock,
        db=db,
        transactions=FakeTransactions(db),
        users=FakeUserStore(db),
        projects=FakeProjectStore(db),
        idempotency=FakeIdempotencyStore(db),
        audit=FakeAuditStore(db),
        annotations=FakeAnnotationStore(db),
        record_event=FakeEventRecorder(db),
        events=FakeEventSource(db),
    )


def audited(w: World) -> AuditedTransactions[FakeTx]:
    return AuditedTransactions(w.transactions, w.audit)


def identity_use_cases(w: World, *, max_page_size: int = MAX_PAGE_SIZE) -> IdentityUseCases[FakeTx]:
    return IdentityUseCases(
        audited(w), w.users, w.projects, w.idempotency, max_page_size=max_page_size
    )


def user_directory(
    w: World, *, max_entries: int = 10_000, ttl_seconds: float = 300.0
) -> UserDirectory[FakeTx]:
    return UserDirectory(
        w.transactions, w.users, clock=w.clock, max_entries=max_entries, ttl_seconds=ttl_seconds
    )


def watch_access(w: World) -> WatchAccess[FakeTx]:
    return WatchAccess(
        w.transactions, w.projects, recheck_seconds=WATCH_RECHECK_SECONDS, clock=w.clock
    )


def annotation_use_cases(
    w: World,
    *,
    max_page_size: int = MAX_PAGE_SIZE,
    json_limits: JsonLimits | None = None,
    list_budget_bytes: int = 512 * 1024,
) -> AnnotationUseCases[FakeTx]:
    return AnnotationUseCases(
        audited(w),
        annotations=w.annotations,
        projects=w.projects,
        idempotency=w.idempotency,
        record_event=w.record_event,
        events=w.events,
        watch_access=watch_access(w),
        max_page_size=max_page_size,
        json_limits=json_limits or JsonLimits(max_bytes=64 * 1024),
        list_budget_bytes=list_budget_bytes,
    )


def annotation_history(
    w: World, *, trash_retention: timedelta = timedelta(days=30)
) -> AnnotationHistory[FakeTx]:
    return AnnotationHistory(
        audited(w),
        annotations=w.annotations,
        record_event=w.record_event,
        max_page_size=MAX_PAGE_SIZE,
        clock=w.clock,
        trash_retention=trash_retention,
    )


def new_annotation(
    project_id: int,
    *,
    study_uid: str = "1.2.3",
    series_uid: str = "",
    instance_uid: str = "",
    annotation_type: str = "point",
    data: dict[str, Any] | None = None,
    measurements: Any = None,
    viewer_software: str = "",
    request_id: str = "",
) -> NewAnnotation:
    """CreateAnnotation's request as the servicer hands it over."""
    return NewAnnotation(
        project_id=project_id,
        study_uid=study_uid,
        series_uid=series_uid,
        instance_uid=instance_uid,
        annotation_type=annotation_type,
        annotation_data={"x": 1, "y": 2} if data is None else data,
        measurement_values=measurements,
        viewer_software=viewer_software,
        request_id=request_id,
    )


def caller(user: User, *, platform_admin: bool = False) -> Caller:
    principal = Principal(subject=user.keycloak_id, username=user.username, client_id="viewer")
    return Caller(principal=principal, user_id=user.id, platform_admin=platform_admin)


def call(method: str, who: Caller, *, request_id: str = "rpc-1") -> CallContext:
    """What AccessGate.open builds for `method` (its bare name, e.g. "CreateProject")."""
    [path] = [name for name in ACCESS_BY_METHOD if name.rsplit("/", 1)[-1] == method]
    return CallContext(
        caller=who,
        access=ACCESS_BY_METHOD[path],
        audit=AuditTrail(
            action=method,
            subject=who.principal.subject,
            client_id=who.principal.client_id,
            request_id=request_id,
            resource_type=audit_resource_type(path),
        ),
    )
