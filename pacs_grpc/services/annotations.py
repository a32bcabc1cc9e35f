"""Use cases of AnnotationService."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic

from pacs_grpc.domain import annotation_rules, paging, review, validation
from pacs_grpc.domain.annotation import (
    Annotation,
    AnnotationEvent,
    EventType,
    ListFilter,
    RevisionAction,
    RevisionNote,
)
from pacs_grpc.domain.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.domain.pacs import PacsValidation
from pacs_grpc.domain.paging import Page
from pacs_grpc.domain.review import ReviewState
from pacs_grpc.services.annotation_access import accessible_annotation, check_version, record_change
from pacs_grpc.services.annotation_history import CORRECTION
from pacs_grpc.services.context import (
    AuditedTransactions,
    CallContext,
    authorize_project,
)
from pacs_grpc.services.idempotency import create_once
from pacs_grpc.services.pacs_checks import PacsChecks
from pacs_grpc.services.ports import (
    AnnotationStore,
    EventRecorder,
    EventSource,
    IdempotencyStore,
    ProjectStore,
    TxT,
)
from pacs_grpc.services.watch import WatchAccess

_OPERATION = "CreateAnnotation"


@dataclass(frozen=True)
class NewAnnotation:
    """CreateAnnotation's request as the client sent it; `create` validates every field."""

    project_id: int
    study_uid: str
    series_uid: str
    instance_uid: str
    annotation_type: str
    # JSON as decoded from the request; None when the field was absent.
    annotation_data: dict[str, Any] | None
    measurement_values: Any
    viewer_software: str
    request_id: str
    # The JSON fields as the edge received them, kept to answer reads with (see Annotation).
    annotation_data_encoded: bytes | None = None
    measurement_values_encoded: bytes | None = None


@dataclass(frozen=True)
class ListRequest:
    """ListAnnotations' filters and page as the client sent them."""

    project_id: int
    study_uid: str
    series_uid: str
    instance_uid: str
    annotation_type: str
    user_id: int
    created_after: datetime | None
    created_before: datetime | None
    page_size: int
    page_token: str
    show_deleted: bool = False
    review_state: ReviewState | None = None


class AnnotationUseCases(Generic[TxT]):
    """Annotations: create (idempotent, checked against the PACS), read, list, update under an
    etag, delete, and watch live. Every write records its change event in its transaction."""

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        *,
        annotations: AnnotationStore[TxT],
        projects: ProjectStore[TxT],
        idempotency: IdempotencyStore[TxT],
        record_event: EventRecorder[TxT],
        events: EventSource,
        watch_access: WatchAccess[TxT],
        max_page_size: int,
        json_limits: annotation_rules.JsonLimits,
        list_budget_bytes: int,
        pacs_checks: PacsChecks | None = None,
    ) -> None:
        self._transaction = transaction
        self._pacs_checks = pacs_checks or PacsChecks(None, PacsValidation.OFF)
        self._annotations = annotations
        self._projects = projects
        self._idempotency = idempotency
        self._record_event = record_event
        self._events = events
        self._watch_access = watch_access
        self._max_page_size = max_page_size
        self._json_limits = json_limits
        self._list_budget_bytes = list_budget_bytes

    async def create(self, call: CallContext, request: NewAnnotation) -> Annotation:
        project_id = validation.positive_id("annotation.project_id", request.project_id)
        where = annotation_rules.location(
            "annotation", request.study_uid, request.series_uid, request.instance_uid
        )
        content = annotation_rules.content(
            prefix="annotation",
            annotation_type_value=request.annotation_type,
            data=request.annotation_data,
            measurements=request.measurement_values,
            viewer_software=request.viewer_software,
            limits=self._json_limits,
            data_encoded=request.annotation_data_encoded,
            measurements_encoded=request.measurement_values_encoded,
        )
        request_id = validation.request_id("request_id", request.request_id)
        call.audit.touch(study_uid=where.study_uid)
        # Hashing the JSON is only worth it for a create that can be retried.
        fingerprint = paging.filters_fingerprint(
            project_id, where, content.annotation_type, content.annotation_data,
            content.measurement_values, content.viewer_software,
        ) if request_id is not None else ""  # fmt: skip
        # Asked before the transaction, so a slow PACS holds no connection.
        lookup = await self._pacs_checks.look_up(
            where.study_uid, where.series_uid, where.instance_uid
        )
        async with self._transaction(call) as conn:
            await authorize_project(self._projects, conn, call, project_id)

            async def insert() -> Annotation:
                # Settled once the caller is authorised (a refusal then tells nobody else
                # whether the study is in the PACS), and only for a new annotation: the
                # retry of a create that went through gets its annotation back.
                self._pacs_checks.settle(lookup, "annotation")
                return await self._annotations.insert(
                    conn,
                    project_id=project_id,
                    user_id=call.caller.user_id,
                    where=where,
                    content=content,
                )

            async def find(annotation_id: int) -> Annotation | None:
                found = await self._annotations.get_with_access(
                    conn, annotation_id, call.caller.user_id
                )
                return found.annotation if found else None

            annotation, created = await create_once(
                self._idempotency,
                conn,
                call,
                operation=_OPERATION,
                request_id=request_id,
                fingerprint=fingerprint,
                create=insert,
                find=find,
                id_of=lambda a: a.id,
            )
            call.audit.touch(resource_ids=[annotation.id])
            if created:
                await self._event(conn, call, annotation, EventType.CREATED)
        return annotation

    async def get(self, call: CallContext, annotation_id: int, revision: int = 0) -> Annotation:
        """The annotation now or, given a revision, as that revision left it."""
        validation.positive_id("annotation_id", annotation_id)
        if revision < 0:
            raise InvalidArgument("revision", "must be a revision number, or 0 for the current")
        call.audit.touch(resource_ids=[annotation_id])
        async with self._transaction.read(call) as conn:
            current = await self._accessible(conn, call, annotation_id)
            if not revision or revision == current.row_version:
                return current
            found = await self._annotations.get_revision(conn, annotation_id, revision)
            if found is None:
                raise NotFound("revision not found")
            return found

    async def list_annotations(self, call: CallContext, request: ListRequest) -> Page[Annotation]:
        limit = validation.page_size("page_size", request.page_size, self._max_page_size)
        if request.project_id < 0:
            raise InvalidArgument("project_id", "must be a positive id")
        if request.user_id < 0:
            raise InvalidArgument("user_id", "must be a positive id")
        if request.show_deleted and not request.project_id:
            raise InvalidArgument("show_deleted", "needs project_id: the trash is per project")
        kind = (
            annotation_rules.annotation_type("annotation_type", request.annotation_type)
            if request.annotation_type
            else None
        )
        criteria = ListFilter(
            project_ids=None,
            study_uid=annotation_rules.dicom_uid("study_uid", request.study_uid, required=False),
            series_uid=annotation_rules.dicom_uid("series_uid", request.series_uid, required=False),
            instance_uid=annotation_rules.dicom_uid(
                "instance_uid", request.instance_uid, required=False
            ),
            annotation_type=kind,
            user_id=request.user_id or None,
            created_after=request.created_after,
            created_before=request.created_before,
            include_deleted=request.show_deleted,
            review_state=request.review_state,
        )
        fingerprint = paging.filters_fingerprint(request.project_id, dataclasses.asdict(criteria))
        position = paging.decode(request.page_token, fingerprint, 2, kinds=(datetime, int))
        after = (position[0], position[1]) if position else None
        call.audit.touch(study_uid=criteria.study_uid)
        async with self._transaction.read(call) as conn:
            project_ids = await self._readable_projects(
                conn, call, request.project_id, show_deleted=request.show_deleted
            )
            if project_ids == ():
                return Page([], "")
            read = await self._annotations.list_page(
                conn,
                dataclasses.replace(criteria, project_ids=project_ids),
                after=after,
                limit=limit + 1,
                budget_bytes=self._list_budget_bytes,
            )
            page = Page.of(
                read.rows, limit, fingerprint, lambda a: [a.created_at.isoformat(), a.id],
                cut=read.cut,
            )  # fmt: skip
            call.audit.returned("annotation", [a.id for a in page.items])
        return page

    async def _readable_projects(
        self, conn: TxT, call: CallContext, project_id: int, *, show_deleted: bool
    ) -> tuple[int, ...] | None:
        """The projects to list from: the one asked for, else all the caller may read. Only
        a project's owners may see its trash."""
        if project_id:
            _, role = await authorize_project(self._projects, conn, call, project_id)
            if show_deleted and role is not ProjectRole.OWNER:
                raise PermissionDenied("show_deleted: only the project's owners see its trash")
            return (project_id,)
        if call.caller.platform_admin:
            return None
        memberships = await self._projects.memberships_of(conn, call.caller.user_id)
        return tuple(m.project_id for m in memberships)

    async def update(
        self,
        call: CallContext,
        annotation_id: int,
        etag: str,
        paths: list[str],
        values: Mapping[str, Any],
        *,
        resource_etag: str = "",
    ) -> Annotation:
        """Apply the masked fields. The etag may come on the request or, as AIP-154 and
        Google's clients send it, on the resource itself; either guards the write."""
        validation.positive_id("annotation_id", annotation_id)
        expected_version = annotation_rules.expected_version(etag, resource_etag)
        chosen = validation.field_mask("update_mask", paths, annotation_rules.MUTABLE_FIELDS)
        changes = _validated_changes(chosen, values, self._json_limits)
        call.audit.touch(resource_ids=[annotation_id])
        async with self._transaction(call) as conn:
            current = await self._accessible(conn, call, annotation_id, for_update=True)
            check_version(current, expected_version)
            review.editable(current.review_state, "annotation", CORRECTION)
            if changes.keys() & {"annotation_data", "measurement_values"}:
                data = changes.get("annotation_data", current.annotation_data)
                # Read for update, so whole: only reads that merely answer leave it out.
                assert data is not None
                annotation_rules.json_fits(
                    "annotation.annotation_data",
                    data,
                    changes.get("measurement_values", current.measurement_values),
                    self._json_limits,
                )
            note = RevisionNote(
                RevisionAction.UPDATED,
                call.caller.user_id,
                annotation_rules.changed_fields(current, changes),
            )
            annotation = await self._annotations.update(conn, annotation_id, changes, note)
            await self._event(conn, call, annotation, EventType.UPDATED)
        return annotation

    async def watch(
        self, call: CallContext, project_id: int, study_uid: str, after_event_id: int
    ) -> AbstractAsyncContextManager[AsyncIterator[AnnotationEvent]]:
        """Authorise, then subscribe; the caller iterates the subscription.

        The subscription ends with the token's validity, or with the refusal a new call
        would get once a periodic recheck finds the caller can no longer read the project.
        """
        validation.positive_id("project_id", project_id)
        study = annotation_rules.dicom_uid("study_uid", study_uid, required=False)
        if after_event_id < 0:
            raise InvalidArgument("after_event_id", "must not be negative")
        call.audit.touch(study_uid=study)
        async with self._transaction.read(call) as conn:
            await authorize_project(self._projects, conn, call, project_id)
        subscription = self._events.subscribe(
            project_id, study_uid=study, after_event_id=after_event_id
        )
        return self._watch_access.guard(call, project_id, subscription)

    async def _accessible(
        self, conn: TxT, call: CallContext, annotation_id: int, *, for_update: bool = False
    ) -> Annotation:
        annotation, _ = await accessible_annotation(
            self._annotations, conn, call, annotation_id, for_update=for_update
        )
        return annotation

    async def _event(
        self, conn: TxT, call: CallContext, annotation: Annotation, event_type: EventType
    ) -> None:
        await record_change(
            self._transaction, self._record_event, conn, call,
            annotation=annotation, event_type=event_type,
        )  # fmt: skip


def _validated_changes(
    chosen: frozenset[str], values: Mapping[str, Any], limits: annotation_rules.JsonLimits
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if "annotation_type" in chosen:
        changes["annotation_type"] = annotation_rules.annotation_type(
            "annotation.annotation_type", values.get("annotation_type", "")
        )
    if "annotation_data" in chosen:
        data = values.get("annotation_data")
        if data is None:
            raise InvalidArgument("annotation.annotation_data", "is required (a JSON object)")
        annotation_rules.json_shape("annotation.annotation_data", data, limits)
        changes["annotation_data"] = data
        changes["annotation_data_encoded"] = values.get("annotation_data_encoded")
    if "measurement_values" in chosen:
        measurements = values.get("measurement_values")
        if measurements is not None:
            annotation_rules.json_shape("annotation.measurement_values", measurements, limits)
        changes["measurement_values"] = measurements
        changes["measurement_values_encoded"] = (
            values.get("measurement_values_encoded") if measurements is not None else None
        )
    if "viewer_software" in chosen:
        changes["viewer_software"] = validation.text(
            "annotation.viewer_software",
            values.get("viewer_software", ""),
            max_length=annotation_rules.MAX_VIEWER_SOFTWARE,
        )
    return changes
