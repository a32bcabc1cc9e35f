"""PacsClient and `pacs masks pull` on the real stack: PostgreSQL, SeaweedFS and the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2
from pacs.client import PacsClient, encode_png
from pacs.client.slices import from_directory
from pacs.client.transfer import SignedUrlTransport
from pacs.client.uploads import MaskUploader
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, review_pb2

from pacs_devstack.issuer import DevIssuer
from pacs_devstack.stack import LocalStack
from tests.support.png import png
from tests.support.users import ADMIN_ROLE

PACS = Path(sys.executable).parent / "pacs"
COMPLETE = mask_pb2.MASK_GROUP_STATUS_COMPLETE


@pytest.fixture(scope="module")
def address(live_stack: LocalStack) -> str:
    assert live_stack.server is not None
    return live_stack.server.address


@pytest.fixture(scope="module")
def token(issuer: DevIssuer) -> str:
    return issuer.mint(f"pipeline-{uuid.uuid4().hex[:8]}", realm_roles=[ADMIN_ROLE])


@pytest.fixture(scope="module")
def client(address: str, token: str) -> Iterator[PacsClient]:
    with PacsClient(address, token, insecure=True) as client:
        yield client


@pytest.fixture(scope="module")
def annotation(client: PacsClient) -> annotation_pb2.Annotation:
    project = client.create_project(f"client-{uuid.uuid4().hex[:8]}")
    return client.create_annotation(
        project_id=project.id,
        study_uid="1.2.840.113619.2.5",
        series_uid="1.2.840.113619.2.5.1",
        annotation_type="segmentation",
        data={"model": "lung-seg"},
        measurement_values={"volume_ml": 12.5},
    )


def write_series(folder: Path, count: int, padding: int = 0) -> dict[str, bytes]:
    folder.mkdir()
    images = {f"{i:04d}.png": png(256, 256, seed=i, padding=padding) for i in range(count)}
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return images


def pull(address: str, token: str, annotation_id: int, group_id: int, into: Path) -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    environment |= {"PACS_SERVER": address, "PACS_TOKEN": token, "PACS_INSECURE": "1"}
    done = subprocess.run(
        [PACS, "masks", "pull", str(group_id), str(into), "--annotation", str(annotation_id)],
        env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_a_folder_of_100_slices_is_pushed_and_pulled_back_byte_for_byte(
    client: PacsClient,
    annotation: annotation_pb2.Annotation,
    address: str,
    token: str,
    tmp_path: Path,
    artifacts_dir: Path,
) -> None:
    # About 64 KiB a slice, as in bench/mask_upload.py.
    images = write_series(tmp_path / "series", 100, padding=62_000)
    reports: list[tuple[int, int]] = []
    result = client.upload_mask_group(
        annotation.id,
        directory=tmp_path / "series",
        group_name="lungs",
        model_name="nnU-Net",
        version="2.1",
        modality="CT",
        label_name="lung",
        concurrency=16,
        progress=lambda done, total: reports.append((done, total)),
    )
    group = result.group
    assert (group.status, group.completed_slices, group.slice_count) == (COMPLETE, 100, 100)
    assert result.uploaded == 100
    assert result.bytes_sent == sum(len(b) for b in images.values())
    assert reports[0] == (0, 100)
    assert reports[-1] == (100, 100)
    assert [done for done, _ in reports] == list(range(101))
    # The success criterion of the mask-upload plan: 100 slices within a minute.
    assert result.seconds < 60
    (artifacts_dir / "python-client-push-100.json").write_text(
        json.dumps({"slices": 100, "bytes": result.bytes_sent, "seconds": result.seconds})
    )

    masks = list(client.list_masks(annotation.id, group.id))
    assert [m.slice_index for m in masks] == list(range(100))
    assert {m.label_name for m in masks} == {"lung"}
    assert {(m.width, m.height) for m in masks} == {(256, 256)}

    pulled = tmp_path / "pulled"
    summary = pull(address, token, annotation.id, group.id, pulled)
    assert summary.startswith("pulled 100 slices (")
    assert sorted(p.name for p in pulled.iterdir()) == sorted(images)
    for name, data in images.items():
        assert (pulled / name).read_bytes() == data, name


def test_numpy_arrays_are_encoded_uploaded_and_downloaded(
    client: PacsClient, annotation: annotation_pb2.Annotation, tmp_path: Path
) -> None:
    volume = np.zeros((3, 40, 60), dtype=np.uint16)
    volume[0, 5:20, 10:30] = 1
    volume[1, 10:35, 5:50] = 2
    volume[2, :, :] = 65535
    result = client.upload_mask_group(annotation.id, arrays=volume, model_name="unet-16bit")
    assert result.group.status == COMPLETE
    assert result.group.slice_count == 3
    download = client.download_mask_group(annotation.id, result.group.id, tmp_path)
    assert [p.name for p in download.files] == ["0000.png", "0001.png", "0002.png"]
    for index, path in enumerate(download.files):
        assert path.read_bytes() == encode_png(volume[index])
    masks = list(client.list_masks(annotation.id, result.group.id))
    assert {(m.width, m.height) for m in masks} == {(60, 40)}


def test_uploading_to_a_group_again_sends_only_the_missing_slices(
    client: PacsClient, annotation: annotation_pb2.Annotation, tmp_path: Path
) -> None:
    write_series(tmp_path / "all", 4)
    first_half = tmp_path / "half"
    first_half.mkdir()
    for name in ("0000.png", "0001.png"):
        (first_half / name).write_bytes((tmp_path / "all" / name).read_bytes())
    group = client.create_mask_group(annotation.id, slice_count=4)
    first = client.upload_mask_group(annotation.id, directory=first_half, group_id=group.id)
    assert first.group.status == mask_pb2.MASK_GROUP_STATUS_PENDING
    assert first.group.completed_slices == 2
    second = client.upload_mask_group(annotation.id, directory=tmp_path / "all", group_id=group.id)
    assert (second.uploaded, second.skipped) == (2, 2)
    assert second.group.status == COMPLETE


def test_put_tickets_are_refused_by_a_server_that_did_not_opt_in(
    client: PacsClient, annotation: annotation_pb2.Annotation, tmp_path: Path
) -> None:
    # PUT tickets are opt-in (ALLOW_PUT_UPLOADS); tests/integration/test_mask_hardening.py
    # uploads through them on a server that allows them.
    write_series(tmp_path / "series", 3)
    with pytest.raises(grpc.RpcError) as raised:
        client.upload_mask_group(
            annotation.id, directory=tmp_path / "series", method=mask_pb2.UPLOAD_METHOD_PUT
        )
    error = raised.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("method: ")


class TamperedOnce:
    """The real transport, except that slice 0's first ticket has its signature spoiled,
    so storage itself refuses it as it would an expired one."""

    def __init__(self, transport: SignedUrlTransport) -> None:
        self.transport = transport
        self.spoiled: list[str] = []

    def upload(self, ticket: mask_pb2.UploadTicket, body: bytes, content_type: str) -> None:
        if ticket.slice_index == 0 and not self.spoiled:
            assert "x-amz-signature" in ticket.fields
            forged = mask_pb2.UploadTicket()
            forged.CopyFrom(ticket)
            forged.fields["x-amz-signature"] = "0" * 64
            self.spoiled.append(ticket.upload_id)
            ticket = forged
        self.transport.upload(ticket, body, content_type)


def test_a_ticket_storage_refuses_is_replaced_by_a_new_one(
    client: PacsClient, annotation: annotation_pb2.Annotation, tmp_path: Path
) -> None:
    write_series(tmp_path / "series", 3)
    slices = [replace(s, label_name="x") for s in from_directory(tmp_path / "series")]
    group = client.create_mask_group(annotation.id, slice_count=3)
    transport = TamperedOnce(SignedUrlTransport(concurrency=3))
    try:
        stats = MaskUploader(client.masks, transport).upload(annotation.id, group.id, slices)
    finally:
        transport.transport.close()
    assert len(transport.spoiled) == 1
    assert stats.retries == 1
    assert stats.group is not None
    assert stats.group.status == COMPLETE
    recorded = {m.slice_index for m in client.list_masks(annotation.id, group.id)}
    assert recorded == {0, 1, 2}


REVISION = annotation_pb2.AnnotationRevisionAction


@pytest.fixture
def revised(client: PacsClient, annotation: annotation_pb2.Annotation) -> annotation_pb2.Annotation:
    """A new annotation, created with {"model": "v1"} then updated to {"model": "v2"}."""
    created = client.create_annotation(
        project_id=annotation.project_id, study_uid=annotation.study_uid,
        annotation_type="point", data={"model": "v1"},
    )  # fmt: skip
    change = annotation_pb2.Annotation()
    change.annotation_data.update({"model": "v2"})
    return client.annotations.UpdateAnnotation(
        annotation_pb2.UpdateAnnotationRequest(
            annotation_id=created.id, annotation=change, etag=created.etag,
            update_mask=field_mask_pb2.FieldMask(paths=["annotation_data"]),
        )
    ).annotation  # fmt: skip


def status_of(raised: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    error = raised.value
    assert isinstance(error, grpc.Call)
    return error.code()


def test_history_lists_each_write_newest_first(
    client: PacsClient, revised: annotation_pb2.Annotation
) -> None:
    me = client.login().user.id
    revisions = list(client.history(revised.id))
    assert [(r.revision, r.action, r.user_id) for r in revisions] == [
        (2, REVISION.ANNOTATION_REVISION_ACTION_UPDATED, me),
        (1, REVISION.ANNOTATION_REVISION_ACTION_CREATED, me),
    ]
    assert list(revisions[0].changed_fields) == ["annotation_data"]
    assert "annotation_data" in revisions[1].changed_fields
    assert revisions[0].created_at.ToDatetime() >= revisions[1].created_at.ToDatetime()
    assert revisions[0].restored_from_revision == 0


def test_get_annotation_with_a_revision_returns_that_revisions_content(
    client: PacsClient, revised: annotation_pb2.Annotation
) -> None:
    first = client.get_annotation(revised.id, revision=1)
    assert (first.revision, dict(first.annotation_data)) == (1, {"model": "v1"})
    now = client.get_annotation(revised.id)
    assert (now.revision, now.etag, dict(now.annotation_data)) == (2, revised.etag, {"model": "v2"})
    with pytest.raises(grpc.RpcError) as raised:
        client.get_annotation(revised.id, revision=9)
    assert status_of(raised) is grpc.StatusCode.NOT_FOUND


def test_restore_writes_an_old_revision_back_as_a_new_one(
    client: PacsClient, revised: annotation_pb2.Annotation
) -> None:
    restored = client.restore(revised.id, 1, etag=revised.etag)
    assert (restored.revision, dict(restored.annotation_data)) == (3, {"model": "v1"})
    assert client.get_annotation(revised.id).etag == restored.etag
    newest = next(client.history(revised.id))
    assert (newest.revision, newest.action, newest.restored_from_revision) == (
        3, REVISION.ANNOTATION_REVISION_ACTION_RESTORED, 1,
    )  # fmt: skip
    # Revision 2 is still there to go back to.
    assert dict(client.get_annotation(revised.id, revision=2).annotation_data) == {"model": "v2"}


def test_restore_with_a_stale_etag_is_aborted_and_changes_nothing(
    client: PacsClient, revised: annotation_pb2.Annotation
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.restore(revised.id, 1, etag="v1")
    assert status_of(raised) is grpc.StatusCode.ABORTED
    assert [r.revision for r in client.history(revised.id)] == [2, 1]
    assert dict(client.get_annotation(revised.id).annotation_data) == {"model": "v2"}


def test_a_deleted_annotation_comes_back_with_undelete(
    client: PacsClient, revised: annotation_pb2.Annotation
) -> None:
    client.delete_annotation(revised.id, etag=revised.etag)
    with pytest.raises(grpc.RpcError) as raised:
        client.get_annotation(revised.id)
    assert status_of(raised) is grpc.StatusCode.NOT_FOUND
    back = client.undelete(revised.id)
    assert (back.id, dict(back.annotation_data)) == (revised.id, {"model": "v2"})
    assert dict(client.get_annotation(revised.id).annotation_data) == {"model": "v2"}


def test_a_purged_annotation_cannot_be_undeleted(
    client: PacsClient, revised: annotation_pb2.Annotation
) -> None:
    client.delete_annotation(revised.id, purge=True)
    with pytest.raises(grpc.RpcError) as raised:
        client.undelete(revised.id)
    assert status_of(raised) is grpc.StatusCode.NOT_FOUND


# -- review ----------------------------------------------------------------------------------

State = review_pb2.ReviewState


@pytest.fixture(scope="module")
def reviewer(
    issuer: DevIssuer, address: str, client: PacsClient, annotation: annotation_pb2.Annotation
) -> Iterator[PacsClient]:
    """A member of the module's project with the reviewer role (no platform role), who wrote
    none of its content."""
    token = issuer.mint(f"reviewer-{uuid.uuid4().hex[:8]}")
    with PacsClient(address, token, insecure=True) as reviewer:
        client.identity.AddProjectMember(
            identity_pb2.AddProjectMemberRequest(
                project_id=annotation.project_id, user_id=reviewer.login().user.id,
                role=identity_pb2.PROJECT_ROLE_REVIEWER,
            )
        )  # fmt: skip
        yield reviewer


def new_point(
    client: PacsClient, annotation: annotation_pb2.Annotation
) -> annotation_pb2.Annotation:
    return client.create_annotation(
        project_id=annotation.project_id, study_uid=annotation.study_uid,
        annotation_type="point", data={"x": 1},
    )  # fmt: skip


def test_what_the_author_submits_a_reviewer_approves_and_it_is_frozen(
    client: PacsClient, reviewer: PacsClient, annotation: annotation_pb2.Annotation
) -> None:
    created = new_point(client, annotation)
    assert created.review.state == State.REVIEW_STATE_DRAFT
    submitted = client.submit(created.id, etag=created.etag)
    assert (submitted.review.state, submitted.review.user_id) == (
        State.REVIEW_STATE_SUBMITTED, client.login().user.id,
    )  # fmt: skip
    approved = reviewer.approve(created.id, etag=submitted.etag)
    assert (approved.review.state, approved.review.user_id) == (
        State.REVIEW_STATE_APPROVED, reviewer.login().user.id,
    )  # fmt: skip
    assert approved.review.HasField("changed_at")
    assert client.get_annotation(created.id).review.state == State.REVIEW_STATE_APPROVED
    newest = next(client.history(created.id))
    assert newest.action == REVISION.ANNOTATION_REVISION_ACTION_APPROVED
    with pytest.raises(grpc.RpcError) as raised:
        client.restore(created.id, 1)
    assert status_of(raised) is grpc.StatusCode.FAILED_PRECONDITION


def test_a_rejection_carries_its_comment_and_the_author_submits_again(
    client: PacsClient, reviewer: PacsClient, annotation: annotation_pb2.Annotation
) -> None:
    created = new_point(client, annotation)
    client.submit(created.id)
    rejected = reviewer.reject(created.id, "the point is off the nodule")
    assert (rejected.review.state, rejected.review.comment) == (
        State.REVIEW_STATE_REJECTED, "the point is off the nodule",
    )  # fmt: skip
    assert client.submit(created.id).review.state == State.REVIEW_STATE_SUBMITTED
    with pytest.raises(grpc.RpcError) as raised:
        reviewer.reject(created.id, "  ")
    assert status_of(raised) is grpc.StatusCode.INVALID_ARGUMENT
    # A stale etag: the rejection above changed the annotation.
    with pytest.raises(grpc.RpcError) as raised:
        reviewer.approve(created.id, etag=rejected.etag)
    assert status_of(raised) is grpc.StatusCode.ABORTED
    assert client.get_annotation(created.id).review.state == State.REVIEW_STATE_SUBMITTED


def test_nobody_approves_their_own_work_not_even_a_platform_admin(
    client: PacsClient, annotation: annotation_pb2.Annotation
) -> None:
    # The module's client is a platform administrator who wrote and submitted both.
    created = new_point(client, annotation)
    submitted = client.submit(created.id)
    with pytest.raises(grpc.RpcError) as raised:
        client.approve(created.id, etag=submitted.etag)
    assert status_of(raised) is grpc.StatusCode.PERMISSION_DENIED
    group = client.upload_mask_group(annotation.id, arrays=np.ones((1, 8, 8), np.uint8)).group
    client.submit(annotation.id, group_id=group.id)
    with pytest.raises(grpc.RpcError) as raised:
        client.approve(annotation.id, group_id=group.id)
    assert status_of(raised) is grpc.StatusCode.PERMISSION_DENIED
    assert client.get_annotation(created.id).review.state == State.REVIEW_STATE_SUBMITTED
    assert (
        client.get_mask_group(annotation.id, group.id).review.state == State.REVIEW_STATE_SUBMITTED
    )


def test_the_review_queue_lists_what_was_submitted_and_nothing_else(
    client: PacsClient, reviewer: PacsClient, annotation: annotation_pb2.Annotation
) -> None:
    waiting, draft, approved = (new_point(client, annotation) for _ in range(3))
    client.submit(waiting.id)
    reviewer.approve(approved.id, etag=client.submit(approved.id).etag)
    queue = list(reviewer.review_queue(annotation.project_id))
    listed = [a.id for a in queue]
    assert waiting.id in listed
    assert draft.id not in listed
    assert approved.id not in listed
    assert {a.review.state for a in queue} == {State.REVIEW_STATE_SUBMITTED}


def test_a_mask_group_is_submitted_once_complete_and_approved_by_a_reviewer(
    client: PacsClient, reviewer: PacsClient, annotation: annotation_pb2.Annotation
) -> None:
    pending = client.create_mask_group(annotation.id, slice_count=2)
    with pytest.raises(grpc.RpcError) as raised:
        client.submit(annotation.id, group_id=pending.id)
    assert status_of(raised) is grpc.StatusCode.FAILED_PRECONDITION
    group = client.upload_mask_group(annotation.id, arrays=np.ones((2, 8, 8), np.uint8)).group
    assert group.review.state == State.REVIEW_STATE_DRAFT
    submitted = client.submit(annotation.id, group_id=group.id)
    assert submitted.review.state == State.REVIEW_STATE_SUBMITTED
    approved = reviewer.approve(annotation.id, group_id=group.id)
    assert (approved.id, approved.review.state) == (group.id, State.REVIEW_STATE_APPROVED)
    listed = client.list_mask_groups(annotation.id, review_state=State.REVIEW_STATE_APPROVED)
    ids = [g.id for g in listed]
    assert group.id in ids
    assert pending.id not in ids


def test_a_correction_is_uploaded_as_the_next_version_with_its_provenance(
    client: PacsClient, annotation: annotation_pb2.Annotation
) -> None:
    first = client.upload_mask_group(annotation.id, arrays=np.ones((2, 8, 8), np.uint8)).group
    parameters = {"threshold": 0.7, "tta": True}

    second = client.upload_mask_group(
        annotation.id,
        arrays=np.zeros((2, 8, 8), np.uint8),
        supersedes=first.id,
        inference_parameters=parameters,
    ).group

    assert (second.lineage_id, second.version_number, second.current) == (first.id, 2, True)
    assert dict(second.inference_parameters) == parameters
    lineage = client.list_mask_group_versions(annotation.id, first.id)
    assert [(g.id, g.current) for g in lineage] == [(second.id, True), (first.id, False)]
    current = {g.id for g in client.list_mask_groups(annotation.id)}
    assert (second.id in current, first.id in current) == (True, False)
    every = {g.id for g in client.list_mask_groups(annotation.id, all_versions=True)}
    assert {first.id, second.id} <= every
    with pytest.raises(ValueError, match="leave out group_id"):
        client.upload_mask_group(
            annotation.id, arrays=np.ones((1, 8, 8)), group_id=second.id, supersedes=first.id
        )
