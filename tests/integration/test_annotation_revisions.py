"""Annotation history on the real stack: every write keeps a revision, and restoring one is a
new revision, never a rewrite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc

from pacs_devstack.stack import LocalStack
from pacs_grpc.adapters.postgres.migrator import load_migrations, migrate
from tests.support.projects import ANNOTATOR, VIEWER, new_team
from tests.support.users import ApiUser, login, unique_name

STUDY = "1.2.840.113619.2.55.3.604688119.969.1268071029.321"
if TYPE_CHECKING:
    from pacs.v1.annotation_pb2_grpc import AnnotationServiceAsyncStub as Stub

REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
Action = annotation_pb2.AnnotationRevisionAction


class Team:
    def __init__(self, project_id: int, annotator: ApiUser, second: ApiUser, viewer: ApiUser):
        self.project_id = project_id
        self.annotator = annotator
        self.second = second
        self.viewer = viewer


@pytest.fixture(scope="module")
def stub(channel: aio.Channel) -> Stub:
    return annotation_pb2_grpc.AnnotationServiceStub(channel)


@pytest.fixture(scope="module")
async def team(live_stack: LocalStack, channel: aio.Channel) -> Team:
    assert live_stack.issuer is not None
    members = {"annotator": ANNOTATOR, "second": ANNOTATOR, "viewer": VIEWER}
    ct = await new_team(channel, live_stack.issuer, unique_name("history"), members)
    return Team(ct.project_id, ct["annotator"], ct["second"], ct["viewer"])


def _data(label: str) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update({"points": [[1, 2], [3, 4]], "label": label})
    return data


async def _create(stub: Stub, team: Team, label: str = "v1") -> annotation_pb2.Annotation:
    given = annotation_pb2.Annotation(
        project_id=team.project_id,
        study_uid=STUDY,
        annotation_type="polyline",
        annotation_data=_data(label),
    )
    reply = await stub.CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(annotation=given),
        metadata=team.annotator.metadata(),
    )
    return reply.annotation


async def _relabel(
    stub: Stub, user: ApiUser, annotation_id: int, label: str, etag: str = ""
) -> annotation_pb2.Annotation:
    reply = await stub.UpdateAnnotation(
        annotation_pb2.UpdateAnnotationRequest(
            annotation_id=annotation_id,
            annotation=annotation_pb2.Annotation(annotation_data=_data(label)),
            update_mask=field_mask_pb2.FieldMask(paths=["annotation_data"]),
            etag=etag,
        ),
        metadata=user.metadata(),
    )
    return reply.annotation


async def _history(
    stub: Stub, user: ApiUser, annotation_id: int, page_size: int = 500
) -> list[annotation_pb2.AnnotationRevision]:
    revisions: list[annotation_pb2.AnnotationRevision] = []
    token = ""
    while True:
        page = await stub.ListAnnotationRevisions(
            annotation_pb2.ListAnnotationRevisionsRequest(
                annotation_id=annotation_id, page_size=page_size, page_token=token
            ),
            metadata=user.metadata(),
        )
        revisions.extend(page.revisions)
        token = page.next_page_token
        if not token:
            return revisions


async def _label_at(stub: Stub, user: ApiUser, annotation_id: int, revision: int) -> str:
    reply = await stub.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=annotation_id, revision=revision),
        metadata=user.metadata(),
    )
    assert reply.annotation.revision == revision
    assert reply.annotation.etag == f"v{revision}"
    return str(reply.annotation.annotation_data["label"])


async def test_every_write_keeps_who_when_and_what_changed(stub: Stub, team: Team) -> None:
    created = await _create(stub, team)
    assert created.revision == 1
    await _relabel(stub, team.second, created.id, "v2")
    for _ in range(2):
        # The second write names a field it leaves as it was: it changes nothing.
        await stub.UpdateAnnotation(
            annotation_pb2.UpdateAnnotationRequest(
                annotation_id=created.id,
                annotation=annotation_pb2.Annotation(viewer_software="Slicer 5.6"),
                update_mask=field_mask_pb2.FieldMask(paths=["viewer_software"]),
            ),
            metadata=team.annotator.metadata(),
        )

    history = await _history(stub, team.viewer, created.id, page_size=3)

    assert [(r.revision, r.action, list(r.changed_fields), r.user_id) for r in history] == [
        (4, Action.ANNOTATION_REVISION_ACTION_UPDATED, [], team.annotator.user_id),
        (3, Action.ANNOTATION_REVISION_ACTION_UPDATED, ["viewer_software"], team.annotator.user_id),
        (2, Action.ANNOTATION_REVISION_ACTION_UPDATED, ["annotation_data"], team.second.user_id),
        (
            1,
            Action.ANNOTATION_REVISION_ACTION_CREATED,
            ["annotation_data", "annotation_type"],
            team.annotator.user_id,
        ),
    ]
    assert history[0].created_at.ToDatetime() >= history[3].created_at.ToDatetime()
    assert [await _label_at(stub, team.viewer, created.id, n) for n in (1, 2, 4)] == [
        "v1",
        "v2",
        "v2",
    ]


async def test_restoring_revision_1_after_5_updates_writes_revision_7(
    stub: Stub, team: Team
) -> None:
    created = await _create(stub, team, "original")
    current = created
    for n in range(2, 7):
        current = await _relabel(stub, team.annotator, created.id, f"edit {n}", current.etag)
    before = await _history(stub, team.viewer, created.id)

    reply = await stub.RestoreAnnotationRevision(
        annotation_pb2.RestoreAnnotationRevisionRequest(
            annotation_id=created.id, revision=1, etag=current.etag
        ),
        metadata=team.second.metadata(),
    )

    restored = reply.annotation
    assert (restored.revision, restored.etag) == (7, "v7")
    assert restored.annotation_data == created.annotation_data
    after = await _history(stub, team.viewer, created.id)
    assert after[1:] == before
    assert (after[0].revision, after[0].action, after[0].restored_from_revision) == (
        7,
        Action.ANNOTATION_REVISION_ACTION_RESTORED,
        1,
    )
    assert (list(after[0].changed_fields), after[0].user_id) == (
        ["annotation_data"],
        team.second.user_id,
    )
    got = await stub.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=created.id),
        metadata=team.viewer.metadata(),
    )
    assert got.annotation == restored


async def test_restore_refuses_a_stale_etag_a_missing_revision_and_a_viewer(
    stub: Stub, team: Team
) -> None:
    created = await _create(stub, team)
    await _relabel(stub, team.annotator, created.id, "v2")

    def restore(user: ApiUser, revision: int, etag: str) -> object:
        return stub.RestoreAnnotationRevision(
            annotation_pb2.RestoreAnnotationRevisionRequest(
                annotation_id=created.id, revision=revision, etag=etag
            ),
            metadata=user.metadata(),
        )

    cases = [
        (team.annotator, 1, "v1", grpc.StatusCode.ABORTED, "etag"),
        (team.annotator, 9, "v2", grpc.StatusCode.NOT_FOUND, "revision"),
        (team.annotator, 0, "v2", grpc.StatusCode.INVALID_ARGUMENT, "revision"),
        (team.annotator, 1, "x", grpc.StatusCode.INVALID_ARGUMENT, "etag"),
        (team.viewer, 1, "v2", grpc.StatusCode.PERMISSION_DENIED, "needs"),
    ]
    for user, revision, etag, code, named in cases:
        with pytest.raises(aio.AioRpcError) as refused:
            await restore(user, revision, etag)  # type: ignore[misc]
        assert refused.value.code() is code, (revision, etag)
        assert named in (refused.value.details() or "")
    assert len(await _history(stub, team.viewer, created.id)) == 2


async def test_history_is_hidden_from_outsiders_and_missing_revisions_are_not_found(
    live_stack: LocalStack, channel: aio.Channel, stub: Stub, team: Team
) -> None:
    assert live_stack.issuer is not None
    created = await _create(stub, team)
    outsider = await login(channel, live_stack.issuer, unique_name("outsider"))
    for call in (
        stub.ListAnnotationRevisions(
            annotation_pb2.ListAnnotationRevisionsRequest(annotation_id=created.id),
            metadata=outsider.metadata(),
        ),
        stub.GetAnnotation(
            annotation_pb2.GetAnnotationRequest(annotation_id=created.id, revision=1),
            metadata=outsider.metadata(),
        ),
        stub.GetAnnotation(
            annotation_pb2.GetAnnotationRequest(annotation_id=created.id, revision=2),
            metadata=team.viewer.metadata(),
        ),
    ):
        with pytest.raises(aio.AioRpcError) as refused:
            await call
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND


async def test_32_concurrent_updates_with_etags_leave_gap_free_revisions(
    stub: Stub, team: Team
) -> None:
    created = await _create(stub, team)
    aborted = 0

    async def writer(n: int) -> None:
        nonlocal aborted
        etag = created.etag
        while True:
            try:
                await _relabel(stub, team.annotator, created.id, f"writer {n}", etag)
                return
            except aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.ABORTED:
                    raise
                aborted += 1
                got = await stub.GetAnnotation(
                    annotation_pb2.GetAnnotationRequest(annotation_id=created.id),
                    metadata=team.annotator.metadata(),
                )
                etag = got.annotation.etag

    await asyncio.gather(*(writer(n) for n in range(32)))

    history = await _history(stub, team.viewer, created.id)
    assert [r.revision for r in history] == list(range(33, 0, -1))
    assert aborted > 0
    labels = {await _label_at(stub, team.viewer, created.id, n) for n in range(2, 34)}
    assert labels == {f"writer {n}" for n in range(32)}


async def test_32_concurrent_updates_without_etags_each_keep_their_revision(
    stub: Stub, team: Team
) -> None:
    created = await _create(stub, team)

    written = await asyncio.gather(
        *(_relabel(stub, team.second, created.id, f"blind {n}") for n in range(32))
    )

    assert sorted(a.revision for a in written) == list(range(2, 34))
    for annotation in written:
        label = await _label_at(stub, team.viewer, created.id, annotation.revision)
        assert label == annotation.annotation_data["label"]


def _rows(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, list(params))
        return cur.fetchall() if cur.description else []


async def test_revisions_go_only_with_their_annotation(migrated_database_url: str) -> None:
    url = migrated_database_url
    user_id, project_id = _seed_owner(url)
    (annotation_id,) = _rows(
        url,
        "insert into annotation_annotation (user_id, project_id, study_uid, annotation_type,"
        " annotation_data) values (%s, %s, '1.2.3', 'point', '{}') returning id",
        user_id,
        project_id,
    )[0]
    _rows(
        url,
        "insert into annotation_revision (annotation_id, revision, action, changed_fields,"
        " user_id, annotation_type, annotation_data) values (%s, 1, 'created', '{}', %s,"
        " 'point', '{}')",
        annotation_id,
        user_id,
    )
    for change in (
        "update annotation_revision set action = 'updated'",
        "delete from annotation_revision",
        "truncate annotation_revision",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            _rows(url, change)

    # Only from the trash (migration 0013), as the purge does.
    _rows(url, "update annotation_annotation set deleted_at = now() where id = %s", annotation_id)
    _rows(url, "delete from annotation_annotation where id = %s", annotation_id)

    assert _rows(url, "select count(*) from annotation_revision") == [(0,)]


def _seed_owner(url: str) -> tuple[int, int]:
    (user_id,) = _rows(
        url,
        "insert into security_user (keycloak_id, username) values (gen_random_uuid(), %s)"
        " returning id",
        unique_name("u"),
    )[0]
    (project_id,) = _rows(
        url, "insert into security_project (name) values (%s) returning id", unique_name("p")
    )[0]
    return int(str(user_id)), int(str(project_id))


async def test_migration_keeps_one_revision_of_each_older_annotation(
    empty_database_url: str, tmp_path: Path
) -> None:
    url = empty_database_url
    everything = load_migrations(REPO_MIGRATIONS)
    older = [m for m in everything if m.version < 12]
    await migrate(url, older)
    user_id, project_id = _seed_owner(url)
    insert = (
        "insert into annotation_annotation (user_id, project_id, study_uid, annotation_type,"
        " annotation_data, viewer_software, row_version) values (%s, %s, '1.2.3', 'point',"
        " %s, %s, %s) returning id"
    )
    (untouched,) = _rows(url, insert, user_id, project_id, '{"a": 1}', "OHIF", 1)[0]
    (edited,) = _rows(url, insert, user_id, project_id, '{"a": 2}', None, 4)[0]

    await migrate(url, everything)

    rows = _rows(
        url,
        "select annotation_id, revision, action, changed_fields, user_id, annotation_data"
        " from annotation_revision order by annotation_id",
    )
    assert rows == [
        (
            untouched,
            1,
            "created",
            ["annotation_data", "annotation_type", "viewer_software"],
            user_id,
            {"a": 1},
        ),
        (edited, 4, "updated", [], None, {"a": 2}),
    ]
