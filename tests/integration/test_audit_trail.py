"""What each audited RPC's row says: the project, the study, the resource type and the ids the
call returned or changed (for a list, the ids on the page); and that refusals are recorded
whatever deadline the caller sends."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
import pytest
import urllib3
from google.protobuf import field_mask_pb2, struct_pb2
from google.protobuf.message import Message
from grpc import aio
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)

from pacs_devstack.stack import LocalStack
from pacs_grpc.api.access import ACCESS_BY_METHOD
from tests.support.png import png
from tests.support.projects import create_project
from tests.support.users import ApiUser, login, unique_name

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = STUDY + ".2"
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(10))


@dataclass(frozen=True)
class Expected:
    project_id: int | None
    resource_type: str | None
    resource_ids: list[int]
    study_uid: str | None = None


@dataclass
class Ledger:
    """Request id of each call made, with what its audit row must say."""

    calls: dict[str, tuple[str, Expected]] = field(default_factory=dict)

    def metadata(self, user: ApiUser, method: str, expected: Expected) -> Any:
        request_id = uuid.uuid4().hex
        self.calls[request_id] = (method, expected)
        return user.metadata(request_id)


def _rows(database_url: str, request_ids: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "select request_id, action, outcome, project_id, resource_type, resource_ids,"
            " study_uid from audit_log where request_id = any(%s)",
            [request_ids],
        ).fetchall()
    rows: dict[str, list[tuple[Any, ...]]] = {r: [] for r in request_ids}
    for row in found:
        rows[row[0]].append(row[1:])
    return rows


def _upload(ticket: mask_pb2.UploadTicket, body: bytes) -> int:
    fields: dict[str, Any] = dict(ticket.fields)
    fields["file"] = ("mask.png", body, "image/png")
    return int(_http.request("POST", ticket.url, fields=fields).status)


async def test_every_audited_rpc_records_its_project_study_type_and_ids(
    live_stack: LocalStack, channel: aio.Channel
) -> None:
    assert live_stack.issuer is not None
    identity = identity_pb2_grpc.IdentityServiceStub(channel)
    annotations = annotation_pb2_grpc.AnnotationServiceStub(channel)
    masks = mask_pb2_grpc.MaskServiceStub(channel)
    admin = await login(channel, live_stack.issuer, unique_name("admin"), admin=True)
    owner = await login(channel, live_stack.issuer, unique_name("owner"))
    spare = await login(channel, live_stack.issuer, unique_name("spare"))
    book = Ledger()

    def meta(user: ApiUser, method: str, expected: Expected) -> Any:
        return book.metadata(user, method, expected)

    # Identity.
    await identity.Login(
        identity_pb2.LoginRequest(),
        metadata=meta(owner, "Login", Expected(None, "user", [owner.user_id])),
    )
    await identity.GetCurrentUser(
        identity_pb2.GetCurrentUserRequest(),
        metadata=meta(owner, "GetCurrentUser", Expected(None, "user", [owner.user_id])),
    )
    await identity.UpdateUser(
        identity_pb2.UpdateUserRequest(
            user_id=owner.user_id,
            user=identity_pb2.User(department="Radiology"),
            update_mask=field_mask_pb2.FieldMask(paths=["department"]),
        ),
        metadata=meta(owner, "UpdateUser", Expected(None, "user", [owner.user_id])),
    )
    created_request = uuid.uuid4().hex
    project = (
        await identity.CreateProject(
            identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name=unique_name("p"))),
            metadata=admin.metadata(created_request),
        )
    ).project
    pid = project.id
    book.calls[created_request] = ("CreateProject", Expected(pid, "project", [pid]))
    await identity.AddProjectMember(
        identity_pb2.AddProjectMemberRequest(
            project_id=pid, user_id=owner.user_id, role=identity_pb2.PROJECT_ROLE_OWNER
        ),
        metadata=meta(admin, "AddProjectMember", Expected(pid, "project_member", [owner.user_id])),
    )
    await identity.GetProject(
        identity_pb2.GetProjectRequest(project_id=pid),
        metadata=meta(owner, "GetProject", Expected(pid, "project", [pid])),
    )
    await identity.ListProjects(
        identity_pb2.ListProjectsRequest(),
        metadata=meta(owner, "ListProjects", Expected(None, "project", [pid])),
    )
    await identity.AddProjectMember(
        identity_pb2.AddProjectMemberRequest(
            project_id=pid, user_id=spare.user_id, role=identity_pb2.PROJECT_ROLE_VIEWER
        ),
        metadata=meta(owner, "AddProjectMember", Expected(pid, "project_member", [spare.user_id])),
    )
    await identity.ListProjectMembers(
        identity_pb2.ListProjectMembersRequest(project_id=pid, page_size=1),
        metadata=meta(
            owner,
            "ListProjectMembers",
            Expected(pid, "project_member", [min(owner.user_id, spare.user_id)]),
        ),
    )
    await identity.RemoveProjectMember(
        identity_pb2.RemoveProjectMemberRequest(project_id=pid, user_id=spare.user_id),
        metadata=meta(
            owner, "RemoveProjectMember", Expected(pid, "project_member", [spare.user_id])
        ),
    )

    # Annotations.
    data = struct_pb2.Struct()
    data.update({"points": [[1, 2], [3, 4]]})
    annotation_ids = []
    for _ in range(2):
        request_id = uuid.uuid4().hex
        created = await annotations.CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(
                annotation=annotation_pb2.Annotation(
                    project_id=pid, study_uid=STUDY, series_uid=SERIES,
                    annotation_type="segmentation", annotation_data=data,
                )
            ),
            metadata=owner.metadata(request_id),
        )  # fmt: skip
        aid = created.annotation.id
        annotation_ids.append(aid)
        book.calls[request_id] = (
            "CreateAnnotation",
            Expected(pid, "annotation", [aid], STUDY),
        )
    first, second = annotation_ids
    listed = await annotations.ListAnnotations(
        annotation_pb2.ListAnnotationsRequest(project_id=pid, study_uid=STUDY),
        metadata=meta(
            owner, "ListAnnotations", Expected(pid, "annotation", sorted(annotation_ids), STUDY)
        ),
    )
    assert sorted(a.id for a in listed.annotations) == sorted(annotation_ids)
    got = await annotations.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=first),
        metadata=meta(owner, "GetAnnotation", Expected(pid, "annotation", [first], STUDY)),
    )
    await annotations.UpdateAnnotation(
        annotation_pb2.UpdateAnnotationRequest(
            annotation_id=first,
            annotation=annotation_pb2.Annotation(viewer_software="OHIF 3"),
            update_mask=field_mask_pb2.FieldMask(paths=["viewer_software"]),
            etag=got.annotation.etag,
        ),
        metadata=meta(owner, "UpdateAnnotation", Expected(pid, "annotation", [first], STUDY)),
    )
    await annotations.ListAnnotationRevisions(
        annotation_pb2.ListAnnotationRevisionsRequest(annotation_id=first),
        metadata=meta(
            owner, "ListAnnotationRevisions", Expected(pid, "annotation", [first], STUDY)
        ),
    )
    await annotations.RestoreAnnotationRevision(
        annotation_pb2.RestoreAnnotationRevisionRequest(annotation_id=first, revision=1),
        metadata=meta(
            owner, "RestoreAnnotationRevision", Expected(pid, "annotation", [first], STUDY)
        ),
    )
    for method, request, actor in (
        (
            "SubmitAnnotationForReview",
            annotation_pb2.SubmitAnnotationForReviewRequest(annotation_id=first),
            owner,
        ),
        (
            "RejectAnnotation",
            annotation_pb2.RejectAnnotationRequest(annotation_id=first, comment="label it"),
            admin,
        ),
        (
            "SubmitAnnotationForReview",
            annotation_pb2.SubmitAnnotationForReviewRequest(annotation_id=first),
            owner,
        ),
    ):
        await getattr(annotations, method)(
            request, metadata=meta(actor, method, Expected(pid, "annotation", [first], STUDY))
        )
    # An approval names the revision it approves: the one the submission left.
    await annotations.ApproveAnnotation(
        annotation_pb2.ApproveAnnotationRequest(annotation_id=first, etag="v6"),
        metadata=meta(admin, "ApproveAnnotation", Expected(pid, "annotation", [first], STUDY)),
    )
    watch_request = uuid.uuid4().hex
    stream = annotations.WatchAnnotations(
        annotation_pb2.WatchAnnotationsRequest(project_id=pid, study_uid=STUDY, after_event_id=1),
        metadata=owner.metadata(watch_request),
    )
    book.calls[watch_request] = ("WatchAnnotations", Expected(pid, "annotation_events", [], STUDY))
    # Catch-up replays the creates: the subscription (and its row) exists once one arrives.
    await asyncio.wait_for(stream.read(), timeout=10)
    stream.cancel()
    await annotations.DeleteAnnotation(
        annotation_pb2.DeleteAnnotationRequest(annotation_id=second),
        metadata=meta(owner, "DeleteAnnotation", Expected(pid, "annotation", [second], STUDY)),
    )
    await annotations.UndeleteAnnotation(
        annotation_pb2.UndeleteAnnotationRequest(annotation_id=second),
        metadata=meta(owner, "UndeleteAnnotation", Expected(pid, "annotation", [second], STUDY)),
    )

    # Masks.
    group_request = uuid.uuid4().hex
    group = (
        await masks.CreateMaskGroup(
            mask_pb2.CreateMaskGroupRequest(
                annotation_id=first,
                mask_group=mask_pb2.MaskGroup(group_name="liver", slice_count=3),
            ),
            metadata=owner.metadata(group_request),
        )
    ).mask_group
    gid = group.id
    book.calls[group_request] = ("CreateMaskGroup", Expected(pid, "mask_group", [gid], STUDY))
    await masks.ListMaskGroups(
        mask_pb2.ListMaskGroupsRequest(annotation_id=first),
        metadata=meta(owner, "ListMaskGroups", Expected(pid, "mask_group", [gid], STUDY)),
    )
    await masks.GetMaskGroup(
        mask_pb2.GetMaskGroupRequest(annotation_id=first, group_id=gid),
        metadata=meta(owner, "GetMaskGroup", Expected(pid, "mask_group", [gid], STUDY)),
    )
    await masks.ListMaskGroupVersions(
        mask_pb2.ListMaskGroupVersionsRequest(annotation_id=first, group_id=gid),
        metadata=meta(owner, "ListMaskGroupVersions", Expected(pid, "mask_group", [gid], STUDY)),
    )
    images = [png(8, 8, seed) for seed in range(2)]
    tickets = (
        await masks.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=first,
                group_id=gid,
                method=mask_pb2.UPLOAD_METHOD_POST,
                slices=[
                    mask_pb2.SliceUpload(
                        slice_index=index, content_type="image/png", size_bytes=len(image),
                        md5=hashlib.md5(image).hexdigest(),
                    )
                    for index, image in enumerate(images)
                ],
            ),
            metadata=meta(owner, "CreateUploadUrls", Expected(pid, "mask_group", [gid], STUDY)),
        )
    ).tickets  # fmt: skip
    assert [_upload(t, images[t.slice_index]) for t in tickets] == [204, 204]
    complete_request = uuid.uuid4().hex
    completed = await masks.CompleteUpload(
        mask_pb2.CompleteUploadRequest(
            annotation_id=first,
            group_id=gid,
            uploads=[
                mask_pb2.CompletedUpload(upload_id=t.upload_id, width=8, height=8) for t in tickets
            ],
        ),
        metadata=owner.metadata(complete_request),
    )
    uploaded_ids = sorted(m.id for m in completed.masks)
    assert len(uploaded_ids) == 2
    book.calls[complete_request] = ("CompleteUpload", Expected(pid, "mask", uploaded_ids, STUDY))
    push_request = uuid.uuid4().hex
    pushed = await masks.PushMasks(
        _push_messages(first, gid, [png(8, 8, 7)], first_slice=2),
        metadata=owner.metadata(push_request),
    )
    pushed_ids = [m.id for m in pushed.masks]
    assert len(pushed_ids) == 1
    book.calls[push_request] = ("PushMasks", Expected(pid, "mask", pushed_ids, STUDY))
    all_ids = sorted(uploaded_ids + pushed_ids)
    await masks.ListMasks(
        mask_pb2.ListMasksRequest(annotation_id=first, group_id=gid, page_size=2),
        metadata=meta(owner, "ListMasks", Expected(pid, "mask", all_ids[:2], STUDY)),
    )
    await masks.GetMask(
        mask_pb2.GetMaskRequest(annotation_id=first, group_id=gid, mask_id=pushed_ids[0]),
        metadata=meta(owner, "GetMask", Expected(pid, "mask", pushed_ids, STUDY)),
    )
    await masks.CreateDownloadUrls(
        mask_pb2.CreateDownloadUrlsRequest(annotation_id=first, group_id=gid),
        metadata=meta(owner, "CreateDownloadUrls", Expected(pid, "mask", all_ids, STUDY)),
    )
    # The review of the complete group: submitted, rejected, submitted again, approved.
    group_ids = {"annotation_id": first, "group_id": gid}
    group_steps: tuple[tuple[str, Message, ApiUser], ...] = (
        ("SubmitMaskGroupForReview", mask_pb2.SubmitMaskGroupForReviewRequest(**group_ids), owner),
        ("RejectMaskGroup", mask_pb2.RejectMaskGroupRequest(**group_ids, comment="redo"), admin),
        ("SubmitMaskGroupForReview", mask_pb2.SubmitMaskGroupForReviewRequest(**group_ids), owner),
        ("ApproveMaskGroup", mask_pb2.ApproveMaskGroupRequest(**group_ids), admin),
    )
    for method, step, actor in group_steps:
        await getattr(masks, method)(
            step, metadata=meta(actor, method, Expected(pid, "mask_group", [gid], STUDY))
        )
    # A SEG upload ticket names the annotation it is for; nothing is uploaded here.
    await masks.CreateSegmentationUpload(
        mask_pb2.CreateSegmentationUploadRequest(annotation_id=first, size_bytes=4096),
        metadata=meta(
            owner, "CreateSegmentationUpload", Expected(pid, "annotation", [first], STUDY)
        ),
    )
    # No export yet (exporting needs a PACS link): an empty page names no export.
    await masks.ListMaskGroupExports(
        mask_pb2.ListMaskGroupExportsRequest(annotation_id=first, group_id=gid),
        metadata=meta(owner, "ListMaskGroupExports", Expected(pid, "mask_group_export", [], STUDY)),
    )
    await masks.DeleteMaskGroup(
        mask_pb2.DeleteMaskGroupRequest(annotation_id=first, group_id=gid),
        metadata=meta(owner, "DeleteMaskGroup", Expected(pid, "mask_group", [gid], STUDY)),
    )
    await masks.UndeleteMaskGroup(
        mask_pb2.UndeleteMaskGroupRequest(annotation_id=first, group_id=gid),
        metadata=meta(owner, "UndeleteMaskGroup", Expected(pid, "mask_group", [gid], STUDY)),
    )
    await identity.UpdateProject(
        identity_pb2.UpdateProjectRequest(
            project_id=pid,
            project=identity_pb2.Project(export_unapproved=True),
            update_mask=field_mask_pb2.FieldMask(paths=["export_unapproved"]),
        ),
        metadata=meta(owner, "UpdateProject", Expected(pid, "project", [pid])),
    )
    await identity.DeactivateProject(
        identity_pb2.DeactivateProjectRequest(project_id=pid),
        metadata=meta(admin, "DeactivateProject", Expected(pid, "project", [pid])),
    )

    covered = {method for method, _ in book.calls.values()}
    # ExportMaskGroup needs a server linked to a PACS, which this one is not: its audit row
    # is checked in tests/integration/test_seg_export.py
    # (test_the_export_round_trips_through_the_pacs_and_is_audited).
    # ImportSegmentation is checked against a linked server too, with a SEG of a real study:
    # tests/integration/test_seg_import.py (test_an_import_is_audited_with_the_new_group).
    elsewhere = {"ExportMaskGroup", "ImportSegmentation"}
    assert covered | elsewhere == {m.rsplit("/", 1)[-1] for m in ACCESS_BY_METHOD}
    rows = _rows(live_stack.database_url, list(book.calls))
    wrong = []
    for request_id, (method, expected) in book.calls.items():
        want = (
            method, "ok", expected.project_id, expected.resource_type,
            sorted(expected.resource_ids) or None, expected.study_uid,
        )  # fmt: skip
        found = [
            (r[0], r[1], r[2], r[3], sorted(r[4]) if r[4] else None, r[5]) for r in rows[request_id]
        ]
        if found != [want]:
            wrong.append((method, found, want))
    assert wrong == []


def _push_messages(
    annotation_id: int, group_id: int, images: list[bytes], *, first_slice: int
) -> Iterator[mask_pb2.PushMasksRequest]:
    yield mask_pb2.PushMasksRequest(
        target=mask_pb2.PushTarget(annotation_id=annotation_id, group_id=group_id)
    )
    for offset, image in enumerate(images):
        yield mask_pb2.PushMasksRequest(
            slice=mask_pb2.PushSliceHeader(
                slice_index=first_slice + offset, content_type="image/png",
                size_bytes=len(image), width=8, height=8, md5=hashlib.md5(image).hexdigest(),
            )
        )  # fmt: skip
        yield mask_pb2.PushMasksRequest(chunk=image)


@pytest.fixture
async def prober(live_stack: LocalStack, channel: aio.Channel) -> tuple[ApiUser, int]:
    """A user of no project, and another project's id for them to probe."""
    assert live_stack.issuer is not None
    admin = await login(channel, live_stack.issuer, unique_name("admin"), admin=True)
    outsider = await login(channel, live_stack.issuer, unique_name("prober"))
    return outsider, await create_project(channel, admin, unique_name("probed"))


async def test_refusals_are_recorded_whatever_deadline_the_caller_sends(
    live_stack: LocalStack, channel: aio.Channel, prober: tuple[ApiUser, int]
) -> None:
    outsider, project_id = prober
    identity = identity_pb2_grpc.IdentityServiceStub(channel)
    refused: list[str] = []
    others: list[str] = []
    # Waits stop a quarter second before the deadline (pacs_grpc.deadlines), so around
    # 250 ms a refusal's row once had only its last milliseconds left: step finely there.
    codes = []
    for timeout_ms in [*range(5, 240, 15), *range(240, 320), *range(320, 500, 30)]:
        request_id = uuid.uuid4().hex
        with pytest.raises(aio.AioRpcError) as raised:
            await identity.GetProject(
                identity_pb2.GetProjectRequest(project_id=project_id),
                metadata=outsider.metadata(request_id),
                timeout=timeout_ms / 1000,
            )
        codes.append(raised.value.code())
        (refused if codes[-1] is grpc.StatusCode.NOT_FOUND else others).append(request_id)
    # Too short to wait for a connection (UNAVAILABLE), or to reach the server at all.
    assert set(codes) <= {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    }
    assert len(refused) >= 40
    # Rows of calls whose deadline passed while they were written are committed
    # after the client gave up; give them a moment.
    await asyncio.sleep(1)
    rows = _rows(live_stack.database_url, refused + others)
    missing = [r for r in refused if len(rows[r]) != 1]
    assert missing == []
    assert all(row[:2] == ("GetProject", "denied") for r in refused for row in rows[r])
    assert all(row[2] == project_id for r in refused for row in rows[r])
    # A call that never reached the server has none; none has two.
    assert all(len(rows[r]) <= 1 for r in others)
