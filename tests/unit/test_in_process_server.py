"""The whole server, composed as production composes it, on in-memory fakes, over a socket.

Every RPC of the three pacs.v1 services is called once through the generated stubs, in an
order that gives each one something to work on; each must answer OK and leave exactly one
audit row. No PostgreSQL, storage or PACS: tests/fakes/server.py stands in for them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from grpc import aio
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
    review_pb2,
)

from pacs_grpc.bootstrap import SERVICE_NAMES, Application, assemble
from pacs_grpc.config import Settings
from pacs_grpc.domain.identity import Principal
from pacs_grpc.domain.objects import PostTicket
from pacs_grpc.domain.segments import SegmentationRead, SegmentInput
from pacs_grpc.services.imports import SEG_CONTENT_TYPE
from tests.fakes.mask_builders import png
from tests.fakes.server import FakeLabelMap, ServerFakes, server_fakes
from tests.fakes.storage import md5

T = TypeVar("T")

STUDY, SERIES = "1.2.840.10.1", "1.2.840.10.1.1"
ENV = {
    "DATABASE_URL": "postgresql://app:db-password@db.internal:5432/pacs",
    "S3_ENDPOINT": "https://minio.internal:9000",
    "S3_ACCESS_KEY": "access",
    "S3_SECRET_KEY": "s3-secret-value",
    "OIDC_ISSUER": "https://keycloak.internal/realms/pacs",
    "OIDC_AUDIENCE": "pacs-api",
    "OIDC_JWKS_URL": "https://keycloak.internal/realms/pacs/protocol/openid-connect/certs",
    "GRPC_HOST": "127.0.0.1",
    "GRPC_PORT": "0",
    # With a PACS link, writes are checked against it (PACS_VALIDATE defaults to enforce).
    "PACS_DICOMWEB_URL": "https://pacs.test/dicom-web",
    # One sweep at start, none while the calls run: the fake database runs one transaction
    # at a time.
    "SWEEPER_INTERVAL_SECONDS": "3600",
    "HEALTH_PROBE_INTERVAL_SECONDS": "3600",
    "SHUTDOWN_GRACE_SECONDS": "1",
}
UNDECLARED = "/pacs.v1.IdentityService/Undeclared"


@dataclass
class Client:
    """The stubs, and a record of every RPC made with the audit row it left."""

    fakes: ServerFakes
    identity: identity_pb2_grpc.IdentityServiceAsyncStub
    annotations: annotation_pb2_grpc.AnnotationServiceAsyncStub
    masks: mask_pb2_grpc.MaskServiceAsyncStub
    tokens: dict[str, str]
    called: list[str] = field(default_factory=list)

    async def call(self, method: str, rpc: Awaitable[T]) -> T:
        """Await one RPC; it must answer OK and add one audit row, naming it."""
        audit = self.fakes.world.audit
        before = len(audit.rows)
        answer = await rpc
        [row] = audit.rows[before:]
        assert (row.action, row.outcome) == (method, "ok")
        self.called.append(method)
        return answer

    def auth(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)


@contextlib.asynccontextmanager
async def serving(
    fakes: ServerFakes, *, extra: grpc.GenericRpcHandler[Any, Any] | None = None
) -> AsyncIterator[tuple[Application, aio.Channel]]:
    settings = Settings.from_env(ENV)
    application = assemble(settings, fakes.adapters(), contextlib.AsyncExitStack())
    if extra is not None:
        application.wiring.server.add_generic_rpc_handlers((extra,))
    assert application.listen() > 0
    try:
        await application.start()
        async with aio.insecure_channel(f"127.0.0.1:{application.port}") as channel:
            yield application, channel
    finally:
        await application.stop()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    fakes = server_fakes()
    fakes.pacs.add_series(STUDY, SERIES, images=2)
    admin_role = Settings.from_env(ENV).oidc.admin_role
    tokens = {
        "anna": fakes.token_for(
            Principal(subject=str(uuid.uuid4()), username="anna", client_id="viewer")
        ),
        "admin": fakes.token_for(
            Principal(
                subject=str(uuid.uuid4()),
                username="root",
                client_id="viewer",
                realm_roles=frozenset({admin_role}),
            )
        ),
    }
    async with serving(fakes) as (_, channel):
        yield Client(
            fakes,
            identity_pb2_grpc.IdentityServiceStub(channel),
            annotation_pb2_grpc.AnnotationServiceStub(channel),
            mask_pb2_grpc.MaskServiceStub(channel),
            tokens,
        )


def _every_rpc() -> set[str]:
    files = (identity_pb2, annotation_pb2, mask_pb2)
    return {
        method.name
        for file in files
        for service in file.DESCRIPTOR.services_by_name.values()
        if service.full_name in SERVICE_NAMES
        for method in service.methods
    }


def _post(ticket: mask_pb2.UploadTicket) -> PostTicket:
    return PostTicket(ticket.url, dict(ticket.fields), ticket.expires_at.ToDatetime(tzinfo=UTC))


async def test_every_rpc_answers_ok_through_the_composed_server(client: Client) -> None:
    c, fakes = client, client.fakes
    anna, admin = c.auth("anna"), c.auth("admin")
    ident, notes, masks = c.identity, c.annotations, c.masks

    # IdentityService, part one.
    login = await c.call("Login", ident.Login(identity_pb2.LoginRequest(), metadata=anna))
    anna_id = login.user.id
    await c.call(
        "GetCurrentUser", ident.GetCurrentUser(identity_pb2.GetCurrentUserRequest(), metadata=anna)
    )
    updated = await c.call(
        "UpdateUser",
        ident.UpdateUser(
            identity_pb2.UpdateUserRequest(
                user_id=anna_id,
                user=identity_pb2.User(full_name="Anna A."),
                update_mask=field_mask_pb2.FieldMask(paths=["full_name"]),
            ),
            metadata=anna,
        ),
    )
    assert updated.user.full_name == "Anna A."
    created = await c.call(
        "CreateProject",
        ident.CreateProject(
            identity_pb2.CreateProjectRequest(
                project=identity_pb2.Project(name="chest-ct"), request_id=str(uuid.uuid4())
            ),
            metadata=admin,
        ),
    )
    project_id = created.project.id
    await c.call(
        "AddProjectMember",
        ident.AddProjectMember(
            identity_pb2.AddProjectMemberRequest(
                project_id=project_id, user_id=anna_id, role=identity_pb2.PROJECT_ROLE_ANNOTATOR
            ),
            metadata=admin,
        ),
    )
    await c.call(
        "GetProject",
        ident.GetProject(identity_pb2.GetProjectRequest(project_id=project_id), metadata=anna),
    )
    listed = await c.call(
        "ListProjects", ident.ListProjects(identity_pb2.ListProjectsRequest(), metadata=anna)
    )
    assert [p.id for p in listed.projects] == [project_id]
    await c.call(
        "ListProjectMembers",
        ident.ListProjectMembers(
            identity_pb2.ListProjectMembersRequest(project_id=project_id), metadata=anna
        ),
    )

    # AnnotationService.
    data = struct_pb2.Struct()
    data.update({"x": 1, "y": 2})
    annotation = (
        await c.call(
            "CreateAnnotation",
            notes.CreateAnnotation(
                annotation_pb2.CreateAnnotationRequest(
                    annotation=annotation_pb2.Annotation(
                        project_id=project_id,
                        study_uid=STUDY,
                        series_uid=SERIES,
                        annotation_type="point",
                        annotation_data=data,
                    ),
                    request_id=str(uuid.uuid4()),
                ),
                metadata=anna,
            ),
        )
    ).annotation
    got = await c.call(
        "GetAnnotation",
        notes.GetAnnotation(
            annotation_pb2.GetAnnotationRequest(annotation_id=annotation.id), metadata=anna
        ),
    )
    await c.call(
        "ListAnnotations",
        notes.ListAnnotations(
            annotation_pb2.ListAnnotationsRequest(project_id=project_id), metadata=anna
        ),
    )
    changed = await c.call(
        "UpdateAnnotation",
        notes.UpdateAnnotation(
            annotation_pb2.UpdateAnnotationRequest(
                annotation_id=annotation.id,
                annotation=annotation_pb2.Annotation(viewer_software="ohif"),
                update_mask=field_mask_pb2.FieldMask(paths=["viewer_software"]),
                etag=got.annotation.etag,
            ),
            metadata=anna,
        ),
    )
    history = await c.call(
        "ListAnnotationRevisions",
        notes.ListAnnotationRevisions(
            annotation_pb2.ListAnnotationRevisionsRequest(annotation_id=annotation.id),
            metadata=anna,
        ),
    )
    assert [(r.revision, list(r.changed_fields)) for r in history.revisions] == [
        (2, ["viewer_software"]),
        (1, ["annotation_data", "annotation_type"]),
    ]
    restored = await c.call(
        "RestoreAnnotationRevision",
        notes.RestoreAnnotationRevision(
            annotation_pb2.RestoreAnnotationRevisionRequest(
                annotation_id=annotation.id, revision=1, etag=changed.annotation.etag
            ),
            metadata=anna,
        ),
    )
    assert (restored.annotation.revision, restored.annotation.viewer_software) == (3, "")
    # The review of the annotation itself: submitted, approved by someone else, and frozen.
    await c.call(
        "SubmitAnnotationForReview",
        notes.SubmitAnnotationForReview(
            annotation_pb2.SubmitAnnotationForReviewRequest(annotation_id=annotation.id),
            metadata=anna,
        ),
    )
    await c.call(
        "RejectAnnotation",
        notes.RejectAnnotation(
            annotation_pb2.RejectAnnotationRequest(
                annotation_id=annotation.id, comment="label the nodule"
            ),
            metadata=admin,
        ),
    )
    resubmitted = await notes.SubmitAnnotationForReview(
        annotation_pb2.SubmitAnnotationForReviewRequest(annotation_id=annotation.id),
        metadata=anna,
    )
    approved_note = await c.call(
        "ApproveAnnotation",
        notes.ApproveAnnotation(
            annotation_pb2.ApproveAnnotationRequest(
                annotation_id=annotation.id, etag=resubmitted.annotation.etag
            ),
            metadata=admin,
        ),
    )
    assert approved_note.annotation.review.state == review_pb2.REVIEW_STATE_APPROVED
    watch = notes.WatchAnnotations(
        annotation_pb2.WatchAnnotationsRequest(project_id=project_id), metadata=anna
    )
    # The fake feed replays the recorded events, then ends as the event hub does when the
    # server stops: the stream's documented end is UNAVAILABLE, to resume elsewhere.
    events = await c.call("WatchAnnotations", _until_the_feed_ends(watch))
    assert [e.annotation_id for e in events] == [annotation.id] * 7
    assert await watch.code() is grpc.StatusCode.UNAVAILABLE

    # MaskService: a group of two slices, one uploaded through a ticket, one pushed.
    a_id = annotation.id
    group = (
        await c.call(
            "CreateMaskGroup",
            masks.CreateMaskGroup(
                mask_pb2.CreateMaskGroupRequest(
                    annotation_id=a_id,
                    mask_group=mask_pb2.MaskGroup(group_name="lungs", slice_count=2),
                    request_id=str(uuid.uuid4()),
                ),
                metadata=anna,
            ),
        )
    ).mask_group
    g_id = group.id
    await c.call(
        "GetMaskGroup",
        masks.GetMaskGroup(
            mask_pb2.GetMaskGroupRequest(annotation_id=a_id, group_id=g_id), metadata=anna
        ),
    )
    await c.call(
        "ListMaskGroups",
        masks.ListMaskGroups(mask_pb2.ListMaskGroupsRequest(annotation_id=a_id), metadata=anna),
    )
    first = png(0)
    tickets = await c.call(
        "CreateUploadUrls",
        masks.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=a_id,
                group_id=g_id,
                slices=[
                    mask_pb2.SliceUpload(
                        slice_index=0, content_type="image/png", size_bytes=len(first)
                    )
                ],
            ),
            metadata=anna,
        ),
    )
    [ticket] = tickets.tickets
    assert fakes.storage.post(_post(ticket), first) == 204
    await c.call(
        "CompleteUpload",
        masks.CompleteUpload(
            mask_pb2.CompleteUploadRequest(
                annotation_id=a_id,
                group_id=g_id,
                uploads=[mask_pb2.CompletedUpload(upload_id=ticket.upload_id, width=8, height=8)],
            ),
            metadata=anna,
        ),
    )
    second = png(1)
    pushed = await c.call(
        "PushMasks",
        masks.PushMasks(
            iter(
                [
                    mask_pb2.PushMasksRequest(
                        target=mask_pb2.PushTarget(annotation_id=a_id, group_id=g_id)
                    ),
                    mask_pb2.PushMasksRequest(
                        slice=mask_pb2.PushSliceHeader(
                            slice_index=1,
                            content_type="image/png",
                            size_bytes=len(second),
                            width=8,
                            height=8,
                            md5=md5(second),
                        )
                    ),
                    mask_pb2.PushMasksRequest(chunk=second),
                ]
            ),
            metadata=anna,
        ),
    )
    assert pushed.mask_group.status == mask_pb2.MASK_GROUP_STATUS_COMPLETE
    listed_masks = await c.call(
        "ListMasks",
        masks.ListMasks(
            mask_pb2.ListMasksRequest(annotation_id=a_id, group_id=g_id), metadata=anna
        ),
    )
    assert [m.slice_index for m in listed_masks.masks] == [0, 1]
    mask_id = listed_masks.masks[0].id
    await c.call(
        "GetMask",
        masks.GetMask(
            mask_pb2.GetMaskRequest(annotation_id=a_id, group_id=g_id, mask_id=mask_id),
            metadata=anna,
        ),
    )
    await c.call(
        "CreateDownloadUrls",
        masks.CreateDownloadUrls(
            mask_pb2.CreateDownloadUrlsRequest(
                annotation_id=a_id, group_id=g_id, mask_ids=[mask_id]
            ),
            metadata=anna,
        ),
    )
    # Only an approved group goes to the PACS: anna submits, the administrator approves.
    submitted = await c.call(
        "SubmitMaskGroupForReview",
        masks.SubmitMaskGroupForReview(
            mask_pb2.SubmitMaskGroupForReviewRequest(annotation_id=a_id, group_id=g_id),
            metadata=anna,
        ),
    )
    assert submitted.mask_group.review.state == review_pb2.REVIEW_STATE_SUBMITTED
    await c.call(
        "RejectMaskGroup",
        masks.RejectMaskGroup(
            mask_pb2.RejectMaskGroupRequest(
                annotation_id=a_id, group_id=g_id, comment="slice 2 misses the lesion"
            ),
            metadata=admin,
        ),
    )
    await masks.SubmitMaskGroupForReview(
        mask_pb2.SubmitMaskGroupForReviewRequest(annotation_id=a_id, group_id=g_id), metadata=anna
    )
    approved = await c.call(
        "ApproveMaskGroup",
        masks.ApproveMaskGroup(
            mask_pb2.ApproveMaskGroupRequest(annotation_id=a_id, group_id=g_id), metadata=admin
        ),
    )
    assert approved.mask_group.review.state == review_pb2.REVIEW_STATE_APPROVED
    exported = await c.call(
        "ExportMaskGroup",
        masks.ExportMaskGroup(
            mask_pb2.ExportMaskGroupRequest(
                annotation_id=a_id, group_id=g_id, request_id=str(uuid.uuid4())
            ),
            metadata=anna,
        ),
    )
    assert fakes.storage.latest(exported.mask_group_export.object_key) is not None
    # A correction of the approved group is a second version, pending until complete.
    corrected = (
        await masks.CreateMaskGroup(
            mask_pb2.CreateMaskGroupRequest(
                annotation_id=a_id,
                mask_group=mask_pb2.MaskGroup(
                    group_name="lungs", slice_count=2, supersedes_group_id=g_id
                ),
                request_id=str(uuid.uuid4()),
            ),
            metadata=anna,
        )
    ).mask_group
    versions = await c.call(
        "ListMaskGroupVersions",
        masks.ListMaskGroupVersions(
            mask_pb2.ListMaskGroupVersionsRequest(annotation_id=a_id, group_id=g_id),
            metadata=anna,
        ),
    )
    assert [(g.id, g.version_number, g.current) for g in versions.mask_groups] == [
        (corrected.id, 2, False),
        (g_id, 1, True),
    ]
    await c.call(
        "ListMaskGroupExports",
        masks.ListMaskGroupExports(
            mask_pb2.ListMaskGroupExportsRequest(annotation_id=a_id, group_id=g_id), metadata=anna
        ),
    )

    # A SEG uploaded through a ticket, then imported as a second group.
    seg = b"DICM a segmentation of both images"
    fakes.segmentations.files[seg] = _segmentation_of_both_images()
    seg_ticket = (
        await c.call(
            "CreateSegmentationUpload",
            masks.CreateSegmentationUpload(
                mask_pb2.CreateSegmentationUploadRequest(annotation_id=a_id, size_bytes=len(seg)),
                metadata=anna,
            ),
        )
    ).ticket
    assert fakes.storage.post(_post(seg_ticket), seg, content_type=SEG_CONTENT_TYPE) == 204
    imported = await c.call(
        "ImportSegmentation",
        masks.ImportSegmentation(
            mask_pb2.ImportSegmentationRequest(
                annotation_id=a_id, request_id=str(uuid.uuid4()), upload_id=seg_ticket.upload_id
            ),
            metadata=anna,
        ),
    )
    assert imported.mask_group.slice_count == 2
    await c.call(
        "DeleteMaskGroup",
        masks.DeleteMaskGroup(
            mask_pb2.DeleteMaskGroupRequest(annotation_id=a_id, group_id=imported.mask_group.id),
            metadata=anna,
        ),
    )
    back_group = await c.call(
        "UndeleteMaskGroup",
        masks.UndeleteMaskGroup(
            mask_pb2.UndeleteMaskGroupRequest(annotation_id=a_id, group_id=imported.mask_group.id),
            metadata=anna,
        ),
    )
    assert back_group.mask_group.id == imported.mask_group.id

    # The end of it all: the annotation (to the trash, back, and to the trash for good), the
    # member, the project.
    await c.call(
        "DeleteAnnotation",
        notes.DeleteAnnotation(
            annotation_pb2.DeleteAnnotationRequest(
                annotation_id=annotation.id, etag=approved_note.annotation.etag
            ),
            # Approved content is frozen: only an owner (here the administrator) deletes it.
            metadata=admin,
        ),
    )
    back = await c.call(
        "UndeleteAnnotation",
        notes.UndeleteAnnotation(
            annotation_pb2.UndeleteAnnotationRequest(annotation_id=annotation.id, etag="v8"),
            metadata=anna,
        ),
    )
    assert (back.annotation.revision, back.annotation.HasField("deleted_at")) == (9, False)
    await notes.DeleteAnnotation(
        annotation_pb2.DeleteAnnotationRequest(annotation_id=annotation.id), metadata=admin
    )
    await c.call(
        "RemoveProjectMember",
        ident.RemoveProjectMember(
            identity_pb2.RemoveProjectMemberRequest(project_id=project_id, user_id=anna_id),
            metadata=admin,
        ),
    )
    await c.call(
        "UpdateProject",
        ident.UpdateProject(
            identity_pb2.UpdateProjectRequest(
                project_id=project_id,
                project=identity_pb2.Project(export_unapproved=True),
                update_mask=field_mask_pb2.FieldMask(paths=["export_unapproved"]),
            ),
            metadata=admin,
        ),
    )
    await c.call(
        "DeactivateProject",
        ident.DeactivateProject(
            identity_pb2.DeactivateProjectRequest(project_id=project_id), metadata=admin
        ),
    )

    assert sorted(c.called) == sorted(_every_rpc())
    # Four calls above were made outside `c`, which counts each RPC once.
    assert len(fakes.world.audit.rows) == len(c.called) + 4


async def test_a_method_missing_from_the_access_table_is_refused_before_its_handler() -> None:
    fakes = server_fakes()
    token = fakes.token_for(Principal(subject=str(uuid.uuid4()), username="anna"))
    reached: list[bytes] = []

    async def undeclared(request: bytes, context: Any) -> bytes:
        reached.append(request)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "pacs.v1.IdentityService",
        {"Undeclared": grpc.unary_unary_rpc_method_handler(undeclared)},
    )
    async with serving(fakes, extra=handler) as (_, channel):
        opened = fakes.world.db.transactions_opened
        call = channel.unary_unary(UNDECLARED, request_serializer=None, response_deserializer=None)
        with pytest.raises(aio.AioRpcError) as refused:
            await call(b"", metadata=(("authorization", f"Bearer {token}"),))
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # Refused on the method alone: no token checked, no transaction, no handler.
        assert fakes.verifier.asked == []
        assert fakes.world.db.transactions_opened == opened
        assert reached == []


async def test_stop_ends_the_event_streams_before_closing_what_was_opened_first() -> None:
    fakes = server_fakes()
    settings = Settings.from_env(ENV)
    cleanup = contextlib.AsyncExitStack()
    # What production registers before composing: its resources (the pool, storage...).
    cleanup.callback(fakes.events.log.append, "resources closed")
    application = assemble(settings, fakes.adapters(), cleanup)
    application.listen()
    await application.start()
    await application.stop()
    assert fakes.events.log == ["events started", "events stopped", "resources closed"]


async def _until_the_feed_ends(stream: Any) -> list[Any]:
    events: list[Any] = []
    with pytest.raises(aio.AioRpcError) as ended:
        await _read_into(events, stream)
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "resume with after_event_id" in (ended.value.details() or "")
    return events


async def _read_into(events: list[Any], stream: Any) -> None:
    async for event in stream:
        events.append(event)


def _segmentation_of_both_images() -> SegmentationRead:
    return SegmentationRead(
        sop_instance_uid="2.25.1001",
        series_instance_uid="2.25.1002",
        study_instance_uid=STUDY,
        source_series_uid=SERIES,
        frame_of_reference_uid=None,
        segments=(SegmentInput(pixel_value=1, label="lung"),),
        algorithm_name=None,
        algorithm_version=None,
        content_label="imported",
        label_maps={f"{SERIES}.{n}": FakeLabelMap((8, 8)) for n in range(2)},
    )
