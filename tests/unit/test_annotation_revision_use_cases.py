"""Annotation history through AnnotationUseCases on in-memory fakes: what each write records,
reading a revision, paging history, and restoring as a new revision."""

from __future__ import annotations

import pytest

from pacs_grpc.domain.annotation import Annotation, EventType, RevisionAction
from pacs_grpc.domain.annotation_rules import AnnotationContent, changed_fields, created_fields
from pacs_grpc.domain.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from pacs_grpc.services.context import CallContext
from tests.unit.test_annotation_use_cases import Setup


@pytest.fixture
def s() -> Setup:
    return Setup()


async def _relabel(s: Setup, annotation: Annotation, label: str, etag: str = "") -> Annotation:
    return await s.use_cases.update(
        s.call("UpdateAnnotation", s.annotator),
        annotation.id,
        etag,
        ["annotation_data"],
        {"annotation_data": {"label": label}},
    )


def test_changed_fields_are_the_named_fields_whose_value_differs() -> None:
    current = AnnotationContent("point", {"a": [1, 2]}, None, "OHIF")

    changed = changed_fields(
        current,
        {
            "annotation_data": {"a": [1, 2]},
            "measurement_values": 3,
            "viewer_software": "Slicer",
            "annotation_data_encoded": b"not content",
        },
    )

    assert changed == ("measurement_values", "viewer_software")


def test_a_creation_changes_the_fields_it_sets() -> None:
    assert created_fields(AnnotationContent("point", {}, None, None)) == (
        "annotation_data",
        "annotation_type",
    )
    assert created_fields(AnnotationContent("point", {}, 0, "OHIF")) == (
        "annotation_data",
        "annotation_type",
        "measurement_values",
        "viewer_software",
    )


async def test_each_write_appends_its_revision_with_author_and_changes(s: Setup) -> None:
    created = await s.create(data={"label": "first"})
    await _relabel(s, created, "second", created.etag)

    page = await s.history.list_revisions(
        s.call("ListAnnotationRevisions", s.viewer), created.id, 0, ""
    )

    assert [(r.revision, r.action, r.changed_fields, r.user_id) for r in page.items] == [
        (2, RevisionAction.UPDATED, ("annotation_data",), s.annotator.id),
        (1, RevisionAction.CREATED, ("annotation_data", "annotation_type"), s.annotator.id),
    ]
    assert page.next_page_token == ""


async def test_history_pages_newest_first_and_resumes_below_the_last_revision(s: Setup) -> None:
    current = await s.create()
    for n in range(4):
        current = await _relabel(s, current, f"edit {n}")

    def call() -> CallContext:
        return s.call("ListAnnotationRevisions", s.viewer)

    first = await s.history.list_revisions(call(), current.id, 2, "")
    second = await s.history.list_revisions(call(), current.id, 2, first.next_page_token)
    third = await s.history.list_revisions(call(), current.id, 2, second.next_page_token)

    pages = [[r.revision for r in page.items] for page in (first, second, third)]
    assert pages == [[5, 4], [3, 2], [1]]
    assert third.next_page_token == ""
    other = await s.create()
    with pytest.raises(InvalidArgument, match="page_token"):
        await s.history.list_revisions(call(), other.id, 2, first.next_page_token)


async def test_get_with_a_revision_answers_that_revisions_content_and_etag(s: Setup) -> None:
    created = await s.create(data={"label": "first"})
    updated = await _relabel(s, created, "second")

    def call() -> CallContext:
        return s.call("GetAnnotation", s.viewer)

    old = await s.use_cases.get(call(), created.id, 1)
    now = await s.use_cases.get(call(), created.id, 2)

    assert (old.annotation_data, old.etag) == ({"label": "first"}, "v1")
    assert now == await s.use_cases.get(call(), created.id) == updated
    with pytest.raises(NotFound, match="revision"):
        await s.use_cases.get(call(), created.id, 3)
    with pytest.raises(InvalidArgument, match="revision"):
        await s.use_cases.get(call(), created.id, -1)


async def test_restore_writes_the_old_content_as_a_new_revision(s: Setup) -> None:
    created = await s.create(data={"label": "first"})
    updated = await _relabel(s, created, "second")
    events_before = len(s.events)

    restored = await s.history.restore(
        s.call("RestoreAnnotationRevision", s.annotator), created.id, 1, updated.etag
    )

    assert (restored.row_version, restored.annotation_data) == (3, {"label": "first"})
    history = s.w.db.tables.revisions[created.id]
    assert [(r.revision, r.action, r.restored_from) for r, _ in history] == [
        (1, RevisionAction.CREATED, None),
        (2, RevisionAction.UPDATED, None),
        (3, RevisionAction.RESTORED, 1),
    ]
    assert history[2][0].changed_fields == ("annotation_data",)
    assert s.events[events_before:] == [(EventType.UPDATED, created.id)]


@pytest.mark.parametrize(
    ("revision", "etag", "refusal"),
    [(1, "v1", Conflict), (5, "v2", NotFound), (0, "v2", InvalidArgument)],
)
async def test_a_refused_restore_writes_nothing(
    s: Setup, revision: int, etag: str, refusal: type[Exception]
) -> None:
    created = await s.create()
    await _relabel(s, created, "second")
    before = list(s.w.db.tables.revisions[created.id])

    with pytest.raises(refusal):
        await s.history.restore(
            s.call("RestoreAnnotationRevision", s.annotator), created.id, revision, etag
        )

    assert s.w.db.tables.revisions[created.id] == before
    assert s.w.db.tables.annotations[created.id].row_version == 2


async def test_viewers_read_history_but_may_not_restore(s: Setup) -> None:
    created = await s.create()
    page = await s.history.list_revisions(
        s.call("ListAnnotationRevisions", s.viewer), created.id, 0, ""
    )
    assert [r.revision for r in page.items] == [1]
    with pytest.raises(PermissionDenied):
        await s.history.restore(s.call("RestoreAnnotationRevision", s.viewer), created.id, 1, "")
    with pytest.raises(NotFound):
        await s.history.list_revisions(
            s.call("ListAnnotationRevisions", s.outsider), created.id, 0, ""
        )
