"""AnnotationUseCases on in-memory fakes: idempotent create, pages, etags, events, audit rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from pacs_grpc.domain.annotation import Annotation, EventType
from pacs_grpc.domain.annotation_rules import JsonLimits
from pacs_grpc.domain.audit import AuditEntry
from pacs_grpc.domain.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from pacs_grpc.domain.identity import ProjectRole, User
from pacs_grpc.domain.masks import MaskGroup
from pacs_grpc.domain.paging import Page
from pacs_grpc.services.annotations import AnnotationUseCases, ListRequest
from pacs_grpc.services.context import CallContext
from tests.fakes import builders
from tests.fakes.builders import World
from tests.fakes.database import FakeTx, RecordedEvent
from tests.fakes.masks import queued_keys, seed_group, seed_mask
from tests.fakes.masks import tables as mask_tables

VIEWER, ANNOTATOR, OWNER = ProjectRole.VIEWER, ProjectRole.ANNOTATOR, ProjectRole.OWNER
STUDY, OTHER_STUDY = "1.2.840.1", "1.2.840.2"


def _ok(call: CallContext, **fields: Any) -> AuditEntry:
    return AuditEntry(
        action=call.audit.action,
        outcome="ok",
        subject=call.caller.principal.subject,
        client_id=call.caller.principal.client_id,
        request_id=call.audit.request_id,
        **fields,
    )


class Setup:
    """A project with an annotator, a viewer, an owner and an outsider."""

    def __init__(self, **options: Any) -> None:
        self.w: World = builders.world()
        self.use_cases: AnnotationUseCases[FakeTx] = builders.annotation_use_cases(
            self.w, **options
        )
        self.history = builders.annotation_history(self.w)
        db = self.w.db
        self.project = db.seed_project("chest-ct")
        self.annotator = db.seed_user("anna")
        self.viewer = db.seed_user("victor")
        self.outsider = db.seed_user("oscar")
        self.admin = db.seed_user("root")
        self.owner = db.seed_user("olga")
        db.seed_member(self.project, self.annotator, ANNOTATOR)
        db.seed_member(self.project, self.viewer, VIEWER)
        db.seed_member(self.project, self.owner, OWNER)

    def call(self, method: str, user: User, *, request_id: str = "rpc-1") -> CallContext:
        return builders.call(
            method,
            builders.caller(user, platform_admin=user is self.admin),
            request_id=request_id,
        )

    async def create(self, user: User | None = None, **fields: Any) -> Annotation:
        fields.setdefault("study_uid", STUDY)
        return await self.use_cases.create(
            self.call("CreateAnnotation", user or self.annotator),
            builders.new_annotation(self.project.id, **fields),
        )

    def deactivate(self) -> None:
        self.w.db.tables.projects[self.project.id] = replace(self.project, is_active=False)

    @property
    def audit(self) -> list[AuditEntry]:
        return self.w.audit.rows

    @property
    def events(self) -> list[tuple[EventType, int]]:
        return [(e.event_type, e.annotation_id) for e in self.w.db.tables.events]


@pytest.fixture
def s() -> Setup:
    return Setup()


# CreateAnnotation


async def test_create_stores_the_annotation_audits_it_and_records_its_event(s: Setup) -> None:
    call = s.call("CreateAnnotation", s.annotator)
    new = builders.new_annotation(
        s.project.id,
        study_uid=STUDY,
        series_uid="1.2.840.1.1",
        instance_uid="1.2.840.1.1.1",
        annotation_type="x-vendor.ruler",
        data={"points": [[1, 2], [3, 4]]},
        measurements={"length_mm": 12.5},
        viewer_software=" OHIF 3 ",
    )
    created = await s.use_cases.create(call, new)
    assert s.w.db.tables.annotations == {created.id: created}
    assert (created.project_id, created.user_id, created.study_uid, created.instance_uid) == (
        s.project.id,
        s.annotator.id,
        STUDY,
        "1.2.840.1.1.1",
    )
    assert (created.annotation_data, created.measurement_values, created.viewer_software) == (
        {"points": [[1, 2], [3, 4]]},
        {"length_mm": 12.5},
        "OHIF 3",
    )
    assert (created.etag, created.created_at) == ("v1", s.w.clock.now())
    assert s.audit == [
        _ok(
            call,
            project_id=s.project.id,
            resource_type="annotation",
            resource_ids=(created.id,),
            study_uid=STUDY,
        )
    ]
    assert s.w.db.tables.events == [
        RecordedEvent(1, s.project.id, STUDY, created.id, EventType.CREATED, s.w.clock.now())
    ]
    # The event takes the project's feed lock until commit: it is the last write.
    assert s.w.db.committed[-1].writes == ["annotations", "audit", "events"]


async def test_a_retried_create_returns_the_first_annotation_and_no_second_event(
    s: Setup,
) -> None:
    first_call = s.call("CreateAnnotation", s.annotator, request_id="rpc-1")
    first = await s.use_cases.create(
        first_call, builders.new_annotation(s.project.id, study_uid=STUDY, request_id="req-1")
    )
    s.w.clock.advance(3)
    retry_call = s.call("CreateAnnotation", s.annotator, request_id="rpc-2")
    again = await s.use_cases.create(
        retry_call, builders.new_annotation(s.project.id, study_uid=STUDY, request_id="req-1")
    )
    assert again == first
    assert list(s.w.db.tables.annotations) == [first.id]
    assert s.events == [(EventType.CREATED, first.id)]
    assert s.w.db.committed[0].writes == ["annotations", "idempotency", "audit", "events"]
    assert s.w.db.committed[1].writes == ["audit"]
    assert s.audit == [
        _ok(
            c,
            project_id=s.project.id,
            resource_type="annotation",
            resource_ids=(first.id,),
            study_uid=STUDY,
        )
        for c in (first_call, retry_call)
    ]


@pytest.mark.parametrize(
    "changed",
    [
        {"study_uid": OTHER_STUDY},
        {"data": {"x": 2}},
        {"measurements": {"area": 1}},
        {"annotation_type": "line"},
        {"viewer_software": "other"},
    ],
)
async def test_a_request_id_reused_for_another_annotation_is_refused(
    s: Setup, changed: dict[str, Any]
) -> None:
    first = await s.create(request_id="req-1")
    call = s.call("CreateAnnotation", s.annotator)
    fields: dict[str, Any] = {"study_uid": STUDY, "request_id": "req-1", **changed}
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.create(call, builders.new_annotation(s.project.id, **fields))
    assert refused.value.field == "request_id"
    assert list(s.w.db.tables.annotations) == [first.id]
    assert len(s.audit) == 1
    assert not call.audit.recorded


async def test_the_same_request_id_in_another_project_is_another_request(s: Setup) -> None:
    other = s.w.db.seed_project("other")
    s.w.db.seed_member(other, s.annotator, ANNOTATOR)
    await s.create(request_id="req-1")
    with pytest.raises(InvalidArgument, match="request_id"):
        await s.use_cases.create(
            s.call("CreateAnnotation", s.annotator),
            builders.new_annotation(other.id, study_uid=STUDY, request_id="req-1"),
        )


async def test_a_retry_after_the_annotation_was_deleted_is_refused(s: Setup) -> None:
    first = await s.create(request_id="req-1")
    await s.history.delete(s.call("DeleteAnnotation", s.annotator), first.id, first.etag)
    with pytest.raises(FailedPrecondition, match="no longer exists"):
        await s.create(request_id="req-1")
    # Still in the trash, and no second one made.
    assert [a.id for a in s.w.db.tables.annotations.values() if a.deleted_at] == [first.id]
    assert len(s.w.db.tables.annotations) == 1


async def test_create_needs_the_annotator_role_in_an_active_project(s: Setup) -> None:
    with pytest.raises(PermissionDenied):
        await s.create(s.viewer)
    with pytest.raises(NotFound, match="project not found"):
        await s.create(s.outsider)
    s.deactivate()
    with pytest.raises(FailedPrecondition):
        await s.create(s.annotator)
    assert s.w.db.tables.annotations == {}
    assert s.audit == []
    assert s.w.db.tables.events == []


async def test_a_failed_event_write_rolls_back_the_annotation_its_key_and_its_row(
    s: Setup,
) -> None:
    s.w.db.fail_next("events.record", Unavailable("database unavailable, retry shortly"))
    call = s.call("CreateAnnotation", s.annotator)
    with pytest.raises(Unavailable):
        await s.use_cases.create(
            call, builders.new_annotation(s.project.id, study_uid=STUDY, request_id="req-1")
        )
    assert s.w.db.tables.annotations == {}
    assert s.w.db.tables.idempotency == {}
    assert s.audit == []
    # The row was written in the transaction that rolled back: the gate writes the error's.
    assert call.audit.written
    assert not call.audit.recorded
    # The key went with it, so the client's retry creates the annotation, once.
    created = await s.create(request_id="req-1")
    assert list(s.w.db.tables.annotations) == [created.id]
    assert s.events == [(EventType.CREATED, created.id)]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"study_uid": ""}, "annotation.study_uid"),
        ({"study_uid": "1.02"}, "annotation.study_uid"),
        ({"instance_uid": "1.2.3"}, "annotation.series_uid"),
        ({"annotation_type": "scribble"}, "annotation.annotation_type"),
        ({"measurements": float("nan")}, "annotation.measurement_values"),
        ({"viewer_software": "v" * 129}, "annotation.viewer_software"),
        ({"request_id": "no spaces please"}, "request_id"),
    ],
)
async def test_bad_create_input_names_its_field_before_any_transaction(
    s: Setup, fields: dict[str, Any], field: str
) -> None:
    fields.setdefault("study_uid", STUDY)
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.create(
            s.call("CreateAnnotation", s.annotator),
            builders.new_annotation(s.project.id, **fields),
        )
    assert refused.value.field == field
    assert s.w.db.transactions_opened == 0


async def test_annotation_json_over_the_byte_limit_is_refused() -> None:
    s = Setup(json_limits=JsonLimits(max_bytes=40))
    with pytest.raises(InvalidArgument) as refused:
        await s.create(data={"text": "x" * 40})
    assert refused.value.field == "annotation.annotation_data"
    assert s.w.db.tables.annotations == {}


# GetAnnotation


async def test_get_for_a_viewer_audits_project_and_study(s: Setup) -> None:
    created = await s.create()
    call = s.call("GetAnnotation", s.viewer)
    assert await s.use_cases.get(call, created.id) == created
    assert s.audit[-1] == _ok(
        call,
        project_id=s.project.id,
        resource_type="annotation",
        resource_ids=(created.id,),
        study_uid=STUDY,
    )


async def test_an_outsider_cannot_tell_a_foreign_annotation_from_a_missing_one(s: Setup) -> None:
    created = await s.create()
    errors = []
    for annotation_id in (created.id, created.id + 100):
        with pytest.raises(NotFound) as refused:
            await s.use_cases.get(s.call("GetAnnotation", s.outsider), annotation_id)
        errors.append(str(refused.value))
    assert errors == ["annotation not found"] * 2
    assert [row.action for row in s.audit] == ["CreateAnnotation"]


async def test_a_deactivated_project_stays_readable(s: Setup) -> None:
    created = await s.create()
    s.deactivate()
    assert await s.use_cases.get(s.call("GetAnnotation", s.viewer), created.id) == created
    # Administrators read any project's annotations.
    assert await s.use_cases.get(s.call("GetAnnotation", s.admin), created.id) == created


# ListAnnotations


def _request(
    project_id: int, page_size: int = 0, page_token: str = "", **filters: Any
) -> ListRequest:
    fields: dict[str, Any] = {
        "study_uid": "",
        "series_uid": "",
        "instance_uid": "",
        "annotation_type": "",
        "user_id": 0,
        "created_after": None,
        "created_before": None,
        **filters,
    }
    return ListRequest(project_id=project_id, page_size=page_size, page_token=page_token, **fields)


async def _pages(
    s: Setup, user: User, project_id: int, page_size: int, **filters: Any
) -> list[list[int]]:
    pages, token = [], ""
    while True:
        page: Page[Annotation] = await s.use_cases.list_annotations(
            s.call("ListAnnotations", user), _request(project_id, page_size, token, **filters)
        )
        pages.append([a.id for a in page.items])
        token = page.next_page_token
        if not token:
            return pages


async def test_list_pages_newest_first_and_the_token_resumes_after_the_last_row(
    s: Setup,
) -> None:
    ids = []
    for _ in range(5):
        ids.append((await s.create()).id)
        s.w.clock.advance(1)
    newest_first = ids[::-1]
    assert await _pages(s, s.viewer, s.project.id, 2) == [
        newest_first[0:2],
        newest_first[2:4],
        newest_first[4:],
    ]
    assert await _pages(s, s.viewer, s.project.id, 5) == [newest_first]


async def test_rows_created_at_one_instant_page_by_id(s: Setup) -> None:
    ids = [(await s.create()).id for _ in range(3)]
    assert len({s.w.db.tables.annotations[i].created_at for i in ids}) == 1
    assert await _pages(s, s.viewer, s.project.id, 2) == [ids[:0:-1], ids[:1]]


async def test_list_audits_the_page_it_returned(s: Setup) -> None:
    first, second = await s.create(), await s.create(study_uid=OTHER_STUDY)
    call = s.call("ListAnnotations", s.viewer)
    page = await s.use_cases.list_annotations(call, _request(s.project.id, 10, study_uid=STUDY))
    assert [a.id for a in page.items] == [first.id]
    assert s.audit[-1] == _ok(
        call,
        project_id=s.project.id,
        resource_type="annotation",
        resource_ids=(first.id,),
        study_uid=STUDY,
    )
    assert second.id not in s.audit[-1].resource_ids


async def test_a_page_token_is_refused_with_other_filters(s: Setup) -> None:
    for _ in range(3):
        await s.create()
    page = await s.use_cases.list_annotations(
        s.call("ListAnnotations", s.viewer), _request(s.project.id, 1, study_uid=STUDY)
    )
    assert page.next_page_token
    for other in (
        _request(s.project.id, 1, page.next_page_token, study_uid=OTHER_STUDY),
        _request(s.project.id, 1, page.next_page_token),
        _request(0, 1, page.next_page_token, study_uid=STUDY),
    ):
        with pytest.raises(InvalidArgument) as refused:
            await s.use_cases.list_annotations(s.call("ListAnnotations", s.viewer), other)
        assert refused.value.field == "page_token"
    # Another page size is not another filter.
    rest = await s.use_cases.list_annotations(
        s.call("ListAnnotations", s.viewer),
        _request(s.project.id, 10, page.next_page_token, study_uid=STUDY),
    )
    assert len(rest.items) == 2


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_size": builders.MAX_PAGE_SIZE + 1}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not a token"}, "page_token"),
        ({"user_id": -1}, "user_id"),
        ({"study_uid": "01.2"}, "study_uid"),
        ({"annotation_type": "doodle"}, "annotation_type"),
    ],
)
async def test_bad_list_input_names_its_field(
    s: Setup, request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.list_annotations(
            s.call("ListAnnotations", s.viewer), _request(s.project.id, **request_fields)
        )
    assert refused.value.field == field
    assert s.w.db.transactions_opened == 0


async def test_list_filters(s: Setup) -> None:
    point = await s.create()
    s.w.clock.advance(10)
    line = await s.create(annotation_type="line", series_uid="1.2.840.1.9")
    by_viewer = await s.create(s.admin, study_uid=OTHER_STUDY)
    assert await _pages(s, s.viewer, s.project.id, 10, annotation_type="line") == [[line.id]]
    assert await _pages(s, s.viewer, s.project.id, 10, series_uid="1.2.840.1.9") == [[line.id]]
    assert await _pages(s, s.viewer, s.project.id, 10, user_id=s.admin.id) == [[by_viewer.id]]
    instant = line.created_at
    assert await _pages(s, s.viewer, s.project.id, 10, created_before=instant) == [[point.id]]
    # created_after includes its instant; created_before excludes it.
    assert await _pages(
        s, s.viewer, s.project.id, 10, created_after=instant, created_before=instant
    ) == [[]]
    assert await _pages(s, s.viewer, s.project.id, 10, created_after=instant) == [
        [by_viewer.id, line.id]
    ]
    later = instant + timedelta(seconds=1)
    assert await _pages(s, s.viewer, s.project.id, 10, created_after=later) == [[]]


async def test_without_a_project_the_list_spans_the_callers_projects(s: Setup) -> None:
    mine = await s.create()
    other = s.w.db.seed_project("other")
    foreign = s.w.db.seed_annotation(other, s.outsider, study_uid=STUDY)
    assert await _pages(s, s.viewer, 0, 10) == [[mine.id]]
    assert await _pages(s, s.admin, 0, 10) == [[foreign.id, mine.id]]
    with pytest.raises(NotFound):
        await _pages(s, s.viewer, other.id, 10)


async def test_a_caller_in_no_project_gets_an_empty_page_and_a_row(s: Setup) -> None:
    call = s.call("ListAnnotations", s.outsider)
    page = await s.use_cases.list_annotations(call, _request(0))
    assert (page.items, page.next_page_token) == ([], "")
    assert s.audit == [_ok(call, resource_type="annotation")]


async def test_a_page_stops_at_the_byte_budget_and_the_token_resumes_there() -> None:
    s = Setup(list_budget_bytes=100)
    big = {"text": "x" * 60}
    ids = [(await s.create(data=big)).id for _ in range(4)]
    newest_first = ids[::-1]
    # Each row's JSON is 72 bytes: a row is read while the rows before it stayed under
    # the budget, so the third starts past it (144 >= 100) and opens the next page.
    assert await _pages(s, s.viewer, s.project.id, 10) == [newest_first[:2], newest_first[2:]]
    # Rows that fit together share a page.
    s2 = Setup(list_budget_bytes=1_000)
    small_ids = [(await s2.create()).id for _ in range(3)]
    assert await _pages(s2, s2.viewer, s2.project.id, 10) == [small_ids[::-1]]


# UpdateAnnotation


async def test_update_with_the_current_etag_applies_and_moves_the_etag_on(s: Setup) -> None:
    created = await s.create(measurements={"a": 1})
    s.w.clock.advance(30)
    call = s.call("UpdateAnnotation", s.annotator)
    updated = await s.use_cases.update(
        call,
        created.id,
        created.etag,
        ["annotation_data", "measurement_values", "viewer_software"],
        {"annotation_data": {"x": 9}, "measurement_values": None, "viewer_software": ""},
    )
    assert (updated.annotation_data, updated.measurement_values, updated.viewer_software) == (
        {"x": 9},
        None,
        None,
    )
    assert (updated.etag, updated.updated_at, updated.created_at) == (
        "v2",
        s.w.clock.now(),
        created.created_at,
    )
    assert s.w.db.tables.annotations[created.id] == updated
    assert s.events == [(EventType.CREATED, created.id), (EventType.UPDATED, created.id)]
    tx = s.w.db.committed[-1]
    assert ("annotation", created.id) in tx.locks
    assert tx.writes == ["annotations", "audit", "events"]
    assert s.audit[-1] == _ok(
        call,
        project_id=s.project.id,
        resource_type="annotation",
        resource_ids=(created.id,),
        study_uid=STUDY,
    )


async def test_kept_encodings_answer_reads_and_follow_every_change_of_their_json(
    s: Setup,
) -> None:
    new = replace(
        builders.new_annotation(s.project.id, study_uid=STUDY, data={"x": 1}, measurements=2),
        annotation_data_encoded=b"data-v1",
        measurement_values_encoded=b"measurements-v1",
    )
    created = await s.use_cases.create(s.call("CreateAnnotation", s.annotator), new)
    # What reads answer with: the encodings, and no JSON decoded beside them.
    got = await s.use_cases.get(s.call("GetAnnotation", s.viewer), created.id)
    assert (got.annotation_data, got.annotation_data_encoded) == (None, b"data-v1")
    assert (got.measurement_values, got.measurement_values_encoded) == (None, b"measurements-v1")

    # A change of the measurements alone is checked against the whole stored JSON (read for
    # update), replaces their encoding and keeps the data's.
    await s.use_cases.update(
        s.call("UpdateAnnotation", s.annotator), created.id, "", ["measurement_values"],
        {"measurement_values": [3], "measurement_values_encoded": b"measurements-v2"},
    )  # fmt: skip
    stored = s.w.db.tables.annotations[created.id]
    assert (stored.annotation_data, stored.annotation_data_encoded) == ({"x": 1}, b"data-v1")
    assert (stored.measurement_values, stored.measurement_values_encoded) == (
        [3],
        b"measurements-v2",
    )
    # New JSON that came without an encoding leaves none behind.
    await s.use_cases.update(
        s.call("UpdateAnnotation", s.annotator), created.id, "", ["annotation_data"],
        {"annotation_data": {"x": 2}},
    )  # fmt: skip
    stored = s.w.db.tables.annotations[created.id]
    assert (stored.annotation_data, stored.annotation_data_encoded) == ({"x": 2}, None)


async def test_a_stale_etag_is_a_conflict_and_changes_nothing(s: Setup) -> None:
    created = await s.create()
    current = await s.use_cases.update(
        s.call("UpdateAnnotation", s.annotator),
        created.id,
        created.etag,
        ["annotation_type"],
        {"annotation_type": "line"},
    )
    for etag, resource_etag in ((created.etag, ""), ("", created.etag)):
        with pytest.raises(Conflict, match="etag"):
            await s.use_cases.update(
                s.call("UpdateAnnotation", s.annotator),
                created.id,
                etag,
                ["annotation_type"],
                {"annotation_type": "circle"},
                resource_etag=resource_etag,
            )
    assert s.w.db.tables.annotations[created.id] == current
    assert len(s.events) == len(s.audit) == 2


async def test_an_update_without_an_etag_applies_last_writer_wins(s: Setup) -> None:
    created = await s.create()
    updated = await s.use_cases.update(
        s.call("UpdateAnnotation", s.annotator),
        created.id,
        "",
        ["annotation_type"],
        {"annotation_type": "circle"},
    )
    assert (updated.annotation_type, updated.row_version) == ("circle", 2)


@pytest.mark.parametrize(
    ("etag", "resource_etag", "paths", "values", "field"),
    [
        ("v1", "v2", ["annotation_type"], {"annotation_type": "line"}, "annotation.etag"),
        ("1", "", ["annotation_type"], {"annotation_type": "line"}, "etag"),
        ("", "W/v1", ["annotation_type"], {"annotation_type": "line"}, "annotation.etag"),
        ("v1", "", [], {}, "update_mask"),
        ("v1", "", ["user_id"], {}, "update_mask"),
        ("v1", "", ["annotation_data"], {"annotation_data": None}, "annotation.annotation_data"),
        ("v1", "", ["annotation_type"], {"annotation_type": "blob"}, "annotation.annotation_type"),
    ],
)
async def test_bad_update_input_names_its_field_before_any_transaction(
    s: Setup,
    etag: str,
    resource_etag: str,
    paths: list[str],
    values: dict[str, Any],
    field: str,
) -> None:
    created = await s.create()
    opened = s.w.db.transactions_opened
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.update(
            s.call("UpdateAnnotation", s.annotator),
            created.id,
            etag,
            paths,
            values,
            resource_etag=resource_etag,
        )
    assert refused.value.field == field
    assert s.w.db.transactions_opened == opened


async def test_new_measurements_that_overflow_with_the_stored_data_are_refused() -> None:
    s = Setup(json_limits=JsonLimits(max_bytes=60))
    created = await s.create(data={"text": "x" * 30})
    call = s.call("UpdateAnnotation", s.annotator)
    with pytest.raises(InvalidArgument, match="at most 60 bytes"):
        await s.use_cases.update(
            call,
            created.id,
            created.etag,
            ["measurement_values"],
            {"measurement_values": {"note": "y" * 30}},
        )
    # Checked inside the transaction, against the stored JSON: nothing was written.
    assert s.w.db.tables.annotations[created.id] == created
    assert [row.action for row in s.audit] == ["CreateAnnotation"]
    assert s.w.db.rolled_back[-1].writes == []


async def test_update_needs_the_annotator_role_in_an_active_project(s: Setup) -> None:
    created = await s.create()
    args = (created.id, created.etag, ["annotation_type"], {"annotation_type": "line"})
    with pytest.raises(PermissionDenied):
        await s.use_cases.update(s.call("UpdateAnnotation", s.viewer), *args)
    with pytest.raises(NotFound):
        await s.use_cases.update(s.call("UpdateAnnotation", s.outsider), *args)
    s.deactivate()
    with pytest.raises(FailedPrecondition):
        await s.use_cases.update(s.call("UpdateAnnotation", s.annotator), *args)
    assert s.w.db.tables.annotations[created.id] == created
    assert len(s.audit) == 1


# DeleteAnnotation


def _with_masks(s: Setup, annotation: Annotation, keys: list[str]) -> MaskGroup:
    """A mask group of the annotation with a recorded mask under each key."""
    group = seed_group(s.w.db, annotation.id, slice_count=len(keys), created_by=s.annotator.id)
    for index, key in enumerate(keys):
        seed_mask(s.w.db, group.id, index, key)
    return group


async def test_delete_moves_to_the_trash_keeping_masks_and_records_the_event(s: Setup) -> None:
    created = await s.create()
    group = _with_masks(s, created, ["masks/a.png", "masks/b.png"])
    call = s.call("DeleteAnnotation", s.annotator)
    assert await s.history.delete(call, created.id, created.etag) == 0
    trashed = s.w.db.tables.annotations[created.id]
    assert (trashed.deleted_at, trashed.row_version) == (s.w.clock.now(), 2)
    assert queued_keys(s.w.db) == []
    assert list(mask_tables(s.w.db).groups) == [group.id]
    assert len(mask_tables(s.w.db).masks) == 2
    assert s.w.db.tables.events[-1] == RecordedEvent(
        2, s.project.id, STUDY, created.id, EventType.DELETED, s.w.clock.now()
    )
    assert s.audit[-1] == _ok(
        call,
        project_id=s.project.id,
        resource_type="annotation",
        resource_ids=(created.id,),
        study_uid=STUDY,
    )
    with pytest.raises(NotFound):
        await s.use_cases.get(s.call("GetAnnotation", s.annotator), created.id)


async def test_delete_with_a_stale_etag_keeps_the_annotation(s: Setup) -> None:
    created = await s.create()
    group = _with_masks(s, created, ["masks/a.png"])
    await s.use_cases.update(
        s.call("UpdateAnnotation", s.annotator), created.id, "", ["annotation_type"], {
            "annotation_type": "line"
        }
    )  # fmt: skip
    with pytest.raises(Conflict):
        await s.history.delete(s.call("DeleteAnnotation", s.annotator), created.id, "v1")
    assert created.id in s.w.db.tables.annotations
    assert list(mask_tables(s.w.db).groups) == [group.id]
    assert queued_keys(s.w.db) == []
    assert [e for e, _ in s.events] == [EventType.CREATED, EventType.UPDATED]


async def test_delete_needs_the_annotator_role(s: Setup) -> None:
    created = await s.create()
    with pytest.raises(PermissionDenied):
        await s.history.delete(s.call("DeleteAnnotation", s.viewer), created.id, "")
    with pytest.raises(NotFound):
        await s.history.delete(s.call("DeleteAnnotation", s.outsider), created.id, "")
    with pytest.raises(InvalidArgument, match="annotation_id"):
        await s.history.delete(s.call("DeleteAnnotation", s.annotator), 0, "")
    assert created.id in s.w.db.tables.annotations


async def test_a_failed_delete_leaves_the_objects_unqueued(s: Setup) -> None:
    created = await s.create()
    group = _with_masks(s, created, ["masks/a.png"])
    s.w.db.fail_next_commit(Conflict("a concurrent change interfered; retry"))
    with pytest.raises(Conflict):
        await s.history.delete(s.call("DeleteAnnotation", s.annotator), created.id, "")
    assert s.w.db.tables.annotations[created.id] == created
    assert list(mask_tables(s.w.db).groups) == [group.id]
    assert [m.file_path for m, _ in mask_tables(s.w.db).masks.values()] == ["masks/a.png"]
    assert queued_keys(s.w.db) == []
    assert len(s.audit) == 1


# WatchAnnotations


async def test_watch_authorises_then_replays_the_projects_events(s: Setup) -> None:
    created = await s.create()
    other_study = await s.create(study_uid=OTHER_STUDY)
    await s.use_cases.update(
        s.call("UpdateAnnotation", s.annotator), created.id, "", ["annotation_type"], {
            "annotation_type": "line"
        }
    )  # fmt: skip
    call = s.call("WatchAnnotations", s.viewer)
    subscription = await s.use_cases.watch(call, s.project.id, STUDY, after_event_id=1)
    assert s.audit[-1] == _ok(
        call, project_id=s.project.id, resource_type="annotation_events", study_uid=STUDY
    )
    async with subscription as events:
        received = [(e.event_id, e.event_type, e.annotation) async for e in events]
        assert s.w.events.open_subscriptions == 1
    assert s.w.events.open_subscriptions == 0
    current = s.w.db.tables.annotations[created.id]
    # Event 1 was seen already; event 2 is the other study's.
    assert received == [(3, EventType.UPDATED, current)]
    assert other_study.id not in [a.id for _, _, a in received if a]


async def test_watch_refuses_outsiders_before_subscribing(s: Setup) -> None:
    with pytest.raises(NotFound):
        await s.use_cases.watch(s.call("WatchAnnotations", s.outsider), s.project.id, "", 0)
    with pytest.raises(InvalidArgument, match="after_event_id"):
        await s.use_cases.watch(s.call("WatchAnnotations", s.viewer), s.project.id, "", -1)
    assert s.w.events.subscriptions == []
    assert s.audit == []


async def test_viewers_keep_watching_a_deactivated_project(s: Setup) -> None:
    s.deactivate()
    subscription = await s.use_cases.watch(
        s.call("WatchAnnotations", s.viewer), s.project.id, "", 0
    )
    async with subscription as events:
        assert [e async for e in events] == []
    assert len(s.w.events.subscriptions) == 1
