"""The trash through AnnotationUseCases and the sweeper, on in-memory fakes: delete hides,
undelete brings back within the retention, purge (owners, or the sweeper after the retention)
is the only hard delete."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pacs_grpc.domain.annotation import Annotation, EventType, RevisionAction
from pacs_grpc.domain.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from pacs_grpc.services.annotations import ListRequest
from tests.fakes import builders
from tests.fakes.mask_builders import MaskWorld
from tests.fakes.masks import queued_keys, seed_group, seed_mask
from tests.fakes.masks import tables as mask_tables
from tests.unit.test_annotation_use_cases import Setup

RETENTION = timedelta(days=30)
STUDY = "1.2.840.1"


@pytest.fixture
def s() -> Setup:
    return Setup()


async def _trashed(s: Setup, keys: tuple[str, ...] = ("masks/a.png",)) -> Annotation:
    created = await s.create()
    group = seed_group(s.w.db, created.id, slice_count=len(keys), created_by=s.annotator.id)
    for index, key in enumerate(keys):
        seed_mask(s.w.db, group.id, index, key)
    await s.history.delete(s.call("DeleteAnnotation", s.annotator), created.id, created.etag)
    return s.w.db.tables.annotations[created.id]


def _list(s: Setup, *, show_deleted: bool, project: int | None = None) -> ListRequest:
    return ListRequest(
        project_id=s.project.id if project is None else project, study_uid="", series_uid="",
        instance_uid="", annotation_type="", user_id=0, created_after=None, created_before=None,
        page_size=0, page_token="", show_deleted=show_deleted,
    )  # fmt: skip


async def test_a_trashed_annotation_is_not_found_by_reads_and_writes(s: Setup) -> None:
    trashed = await _trashed(s)
    with pytest.raises(NotFound):
        await s.use_cases.get(s.call("GetAnnotation", s.viewer), trashed.id)
    with pytest.raises(NotFound):
        await s.use_cases.update(
            s.call("UpdateAnnotation", s.annotator), trashed.id, "", ["viewer_software"], {}
        )
    with pytest.raises(NotFound):
        await s.history.delete(s.call("DeleteAnnotation", s.annotator), trashed.id, "")
    listed = await s.use_cases.list_annotations(
        s.call("ListAnnotations", s.viewer), _list(s, show_deleted=False)
    )
    assert listed.items == []


async def test_owners_see_the_trash_when_they_ask_and_nobody_else_does(s: Setup) -> None:
    trashed = await _trashed(s)
    live = await s.create()
    owner = s.owner

    page = await s.use_cases.list_annotations(
        s.call("ListAnnotations", owner), _list(s, show_deleted=True)
    )

    assert [(a.id, a.deleted_at) for a in page.items] == [
        (live.id, None),
        (trashed.id, trashed.deleted_at),
    ]
    with pytest.raises(PermissionDenied, match="show_deleted"):
        await s.use_cases.list_annotations(
            s.call("ListAnnotations", s.annotator), _list(s, show_deleted=True)
        )
    with pytest.raises(InvalidArgument, match="show_deleted"):
        await s.use_cases.list_annotations(
            s.call("ListAnnotations", owner), _list(s, show_deleted=True, project=0)
        )


async def test_undelete_within_the_retention_gives_everything_back(s: Setup) -> None:
    trashed = await _trashed(s, ("masks/a.png", "masks/b.png"))
    s.w.clock.advance(RETENTION.total_seconds() - 1)

    back = await s.history.undelete(
        s.call("UndeleteAnnotation", s.annotator), trashed.id, trashed.etag
    )

    assert (back.deleted_at, back.row_version) == (None, 3)
    assert back == await s.use_cases.get(s.call("GetAnnotation", s.viewer), trashed.id)
    assert len(mask_tables(s.w.db).masks) == 2
    assert queued_keys(s.w.db) == []
    history = [(r.revision, r.action) for r, _ in s.w.db.tables.revisions[trashed.id]]
    assert history == [
        (1, RevisionAction.CREATED),
        (2, RevisionAction.DELETED),
        (3, RevisionAction.UNDELETED),
    ]
    assert [e for e, _ in s.events] == [EventType.CREATED, EventType.DELETED, EventType.RESTORED]


async def test_undelete_is_refused_after_the_retention_for_live_ones_and_stale_etags(
    s: Setup,
) -> None:
    trashed = await _trashed(s)
    live = await s.create()

    def undelete(annotation_id: int, etag: str = "") -> object:
        return s.history.undelete(s.call("UndeleteAnnotation", s.annotator), annotation_id, etag)

    with pytest.raises(FailedPrecondition, match="not in the trash"):
        await undelete(live.id)  # type: ignore[misc]
    with pytest.raises(Exception, match="etag"):
        await undelete(trashed.id, "v1")  # type: ignore[misc]
    with pytest.raises(PermissionDenied):
        await s.history.undelete(s.call("UndeleteAnnotation", s.viewer), trashed.id, "")
    s.w.clock.advance(RETENTION.total_seconds())
    with pytest.raises(FailedPrecondition, match="time in the trash is up"):
        await undelete(trashed.id)  # type: ignore[misc]
    assert s.w.db.tables.annotations[trashed.id] == trashed


async def test_only_owners_purge_and_a_purge_takes_rows_history_and_objects(s: Setup) -> None:
    trashed = await _trashed(s, ("masks/a.png", "masks/b.png"))
    with pytest.raises(PermissionDenied, match="purge"):
        await s.history.delete(s.call("DeleteAnnotation", s.annotator), trashed.id, "", purge=True)
    assert trashed.id in s.w.db.tables.annotations

    call = s.call("DeleteAnnotation", s.owner)
    queued = await s.history.delete(call, trashed.id, trashed.etag, purge=True)

    assert queued == 2
    assert queued_keys(s.w.db) == ["masks/a.png", "masks/b.png"]
    assert trashed.id not in s.w.db.tables.annotations
    assert trashed.id not in s.w.db.tables.revisions
    assert mask_tables(s.w.db).groups == {}
    assert (s.audit[-1].resource_type, s.audit[-1].resource_ids) == (
        "annotation_purge",
        (trashed.id,),
    )
    # Already trashed: its deletion event was recorded when it went to the trash.
    assert [e for e, _ in s.events] == [EventType.CREATED, EventType.DELETED]


async def test_purging_a_live_annotation_records_its_deletion(s: Setup) -> None:
    created = await s.create()
    await s.history.delete(
        s.call("DeleteAnnotation", s.admin), created.id, created.etag, purge=True
    )
    assert s.w.db.tables.annotations == {}
    assert [e for e, _ in s.events] == [EventType.CREATED, EventType.DELETED]


async def test_the_sweeper_purges_what_the_trash_held_past_its_retention() -> None:
    m = MaskWorld()
    expired = m.seed_masks(m.seed_group(1), [0])
    recent = m.w.db.seed_annotation(m.project, m.annotator, study_uid=STUDY)
    kept = m.seed_masks(m.seed_group(1, annotation=recent), [0])
    annotations = builders.annotation_history(m.w, trash_retention=RETENTION)
    await annotations.delete(m.call("DeleteAnnotation"), m.annotation.id, "")
    sweeper = m.sweeper(trash_retention=RETENTION)

    m.w.clock.advance(RETENTION.total_seconds() - 1)
    await annotations.delete(m.call("DeleteAnnotation"), recent.id, "")
    assert (await sweeper.sweep_once()).purged == 0
    m.w.clock.advance(2)
    result = await sweeper.sweep_once()

    assert (result.purged, result.deleted) == (1, 1)
    assert list(m.w.db.tables.annotations) == [recent.id]
    assert m.annotation.id not in m.w.db.tables.revisions
    assert m.storage.stored_keys("masks/") == [k.file_path for k in kept]
    assert expired[0].file_path not in m.storage.stored_keys("masks/")
    with pytest.raises(NotFound):
        await m.groups().get_group(m.call("GetMaskGroup"), recent.id, next(iter(m.tables.groups)))


async def test_a_purge_commits_before_the_objects_it_queued_are_deleted() -> None:
    m = MaskWorld()
    m.seed_masks(m.seed_group(1), [0])
    annotations = builders.annotation_history(m.w, trash_retention=RETENTION)
    await annotations.delete(m.call("DeleteAnnotation"), m.annotation.id, "")
    m.w.clock.advance(RETENTION.total_seconds() + 1)
    already = len(m.w.db.committed)

    await m.sweeper(trash_retention=RETENTION).sweep_once()

    writes = [tx.writes for tx in m.w.db.committed[already:]]
    purge = next(i for i, w in enumerate(writes) if "annotations" in w)
    deletion = next(i for i, w in enumerate(writes) if "outbox" in w and "annotations" not in w)
    # Had they shared a transaction, a failed commit would restore rows whose objects are gone.
    assert purge < deletion
    assert all("annotations" not in w for w in writes[purge + 1 :])
