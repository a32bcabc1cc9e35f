"""ExportMaskGroup, ListMaskGroupExports, CreateSegmentationUpload and ImportSegmentation on
in-memory fakes: what is stored, recorded and audited, and that a failure leaves no record
and queues what it stored. (The SEG codec itself is tested on real files elsewhere.)"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from pacs_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from pacs_grpc.domain.exports import SERIES_NUMBER_BASE, PacsStatus
from pacs_grpc.domain.masks import Mask, MaskGroup, segmentation_upload_key
from pacs_grpc.domain.segments import SegmentationRead, SegmentInput
from pacs_grpc.services.exports import ExportLink
from pacs_grpc.services.imports import SegmentationTicket, SourceRequest
from tests.fakes.mask_builders import SERIES, STUDY, MaskWorld
from tests.fakes.masks import queued_keys
from tests.fakes.pacs import FakeLabelMap, FakeSegmentationReader
from tests.fakes.storage import ENDPOINT


@pytest.fixture
def m() -> MaskWorld:
    return MaskWorld()


def _complete_group(m: MaskWorld, slices: int = 2) -> tuple[MaskGroup, list[Mask]]:
    """A complete, approved group of `slices` slices bound to a series in the PACS."""
    series = m.pacs.add_series(STUDY, SERIES, images=slices)
    group = m.approve(m.seed_group(slices))
    uids = [i.sop_instance_uid for i in series.instances]
    return group, m.seed_masks(group, range(slices), sop_uids=uids)


async def _export(
    m: MaskWorld, group: MaskGroup, *, store_in_pacs: bool = True, request_id: str = "",
    **options: Any,
) -> ExportLink:  # fmt: skip
    call = m.call("ExportMaskGroup", options.pop("user", None))
    return await m.export_use_cases(**options).export(
        call, m.annotation.id, group.id, store_in_pacs=store_in_pacs, request_id=request_id
    )


# -- ExportMaskGroup ---------------------------------------------------------------------------


async def test_an_export_is_stored_sent_to_the_pacs_and_recorded(m: MaskWorld) -> None:
    group, masks = _complete_group(m)
    call = m.call("ExportMaskGroup")

    link = await m.export_use_cases().export(
        call, m.annotation.id, group.id, store_in_pacs=True, request_id=""
    )

    export = link.export
    prefix = f"exports/p{m.project.id}/a{m.annotation.id}/g{group.id}/"
    assert export.object_key.startswith(prefix)
    assert export.object_key.endswith(".dcm")
    stored = m.storage.latest(export.object_key)
    assert stored is not None
    assert (stored.content_type, export.object_version, export.size_bytes) == (
        "application/dicom",
        stored.version_id,
        len(stored.data),
    )
    # Built from the slices as recorded: the version checked, bound to their images.
    assert sorted(m.storage.reads) == sorted((x.file_path, x.object_version) for x in masks)
    assert f"{masks[0].slice_index}:{masks[0].sop_instance_uid}".encode() in stored.data
    assert m.pacs.stored == [stored.data]
    assert (export.pacs_status, export.pacs_failure_reason) == (PacsStatus.STORED, None)
    assert (export.series_number, export.segment_count) == (SERIES_NUMBER_BASE + 1, 1)
    assert m.tables.exports == {export.id: export}
    assert link.url.startswith(f"{ENDPOINT}/{export.object_key}?versionId={stored.version_id}&")
    assert m.audit == [m.ok(call, resource_type="mask_group_export", resource_ids=(export.id,))]


async def test_an_export_not_sent_to_the_pacs_is_recorded_as_not_requested(
    m: MaskWorld,
) -> None:
    group, _ = _complete_group(m)
    first = await _export(m, group, store_in_pacs=False)
    second = await _export(m, group, store_in_pacs=False)
    assert first.export.pacs_status is PacsStatus.NOT_REQUESTED
    assert ("store", False) not in m.pacs.calls
    assert second.export.series_number == first.export.series_number + 1


@pytest.mark.parametrize(
    ("refuse", "error", "reason"),
    [
        (["1.2.3"], None, "the PACS refused the SEG"),
        ([], Unavailable("the PACS could not be reached"), "could not be reached for STOW-RS"),
        ([], Unavailable("refused by the PACS (HTTP 409)"), "refused by the PACS (HTTP 409)"),
    ],
)
async def test_a_stow_the_pacs_refuses_or_misses_is_recorded_as_failed(
    m: MaskWorld, refuse: list[str], error: Exception | None, reason: str
) -> None:
    group, _ = _complete_group(m)
    m.pacs.refuse, m.pacs.store_error = refuse, error
    link = await _export(m, group)
    assert link.export.pacs_status is PacsStatus.FAILED
    assert reason in (link.export.pacs_failure_reason or "")
    assert m.storage.latest(link.export.object_key) is not None


async def test_a_retry_with_its_request_id_answers_with_the_first_export(m: MaskWorld) -> None:
    group, _ = _complete_group(m)
    first = await _export(m, group, request_id="exp-1")
    calls = len(m.pacs.calls)
    again = await _export(m, group, request_id="exp-1")
    assert again.export == first.export
    assert len(m.pacs.calls) == calls
    assert len(m.tables.exports) == 1
    with pytest.raises(InvalidArgument) as refused:
        await _export(m, group, request_id="exp-1", store_in_pacs=False)
    assert refused.value.field == "request_id"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("incomplete", "not COMPLETE (1 of 2 slices recorded)"),
        ("unbound", "slices 1 are not bound to source images"),
        ("no pacs link", "needs the PACS link"),
        ("series gone", "the annotation's series is not in the PACS"),
        ("slice gone", "slice 0's stored image is missing"),
    ],
)
async def test_an_export_that_cannot_be_built_is_refused_and_stores_nothing(
    m: MaskWorld, setup: str, message: str
) -> None:
    group, masks = _complete_group(m)
    options: dict[str, Any] = {}
    if setup == "incomplete":
        del m.tables.masks[masks[1].id]
    elif setup == "unbound":
        m.tables.masks[masks[1].id] = (_unbound(masks[1]), None)
    elif setup == "no pacs link":
        options["with_pacs"] = False
    elif setup == "series gone":
        m.pacs.series.clear()
    else:
        m.storage.objects.pop(masks[0].file_path)
    with pytest.raises(FailedPrecondition, match=re.escape(message)):
        await _export(m, group, **options)
    assert m.tables.exports == {}
    assert not m.storage.stored_keys("exports/")


def _unbound(mask: Mask) -> Mask:
    return replace(mask, sop_instance_uid=None)


async def test_a_pacs_down_while_reading_the_series_fails_the_export(m: MaskWorld) -> None:
    group, _ = _complete_group(m)
    m.pacs.unreachable = True
    with pytest.raises(Unavailable):
        await _export(m, group)
    assert m.tables.exports == {}
    assert m.audit == []


async def test_storage_down_fails_the_export_and_queues_its_key(m: MaskWorld) -> None:
    group, _ = _complete_group(m)
    m.storage.put_error = Unavailable("object storage unavailable, retry shortly")
    with pytest.raises(Unavailable):
        await _export(m, group)
    assert "put_stream" in m.storage.calls
    assert m.tables.exports == {}
    # Whether or not storage kept any of it, the key is queued for the sweeper.
    (queued,) = queued_keys(m.w.db)
    assert queued.startswith("exports/")


async def test_a_record_that_fails_queues_the_stored_seg(m: MaskWorld) -> None:
    group, _ = _complete_group(m)
    m.w.db.fail_next("exports.insert", Unavailable("database unavailable"))
    with pytest.raises(Unavailable):
        await _export(m, group)
    (stored,) = m.storage.stored_keys("exports/")
    assert queued_keys(m.w.db) == [stored]


async def test_a_viewer_may_not_export_and_nothing_is_read(m: MaskWorld) -> None:
    group, _ = _complete_group(m)
    with pytest.raises(PermissionDenied, match="annotator"):
        await _export(m, group, user=m.viewer)
    assert m.storage.calls == []
    assert m.pacs.calls == []


# -- ListMaskGroupExports ----------------------------------------------------------------------


async def test_exports_are_listed_newest_first_a_page_at_a_time_with_links(m: MaskWorld) -> None:
    group, _ = _complete_group(m)
    made = [(await _export(m, group, store_in_pacs=False)).export for _ in range(3)]
    use = m.export_use_cases()
    call = m.call("ListMaskGroupExports", m.viewer)
    page, links = await use.list_exports(call, m.annotation.id, group.id, 2, "")
    assert page.items == [made[2], made[1]]
    assert [link.export for link in links] == page.items
    assert all(link.expires_at == m.w.clock.now() + timedelta(minutes=10) for link in links)
    assert m.audit[-1] == m.ok(
        call, resource_type="mask_group_export", resource_ids=(made[2].id, made[1].id)
    )
    rest, _ = await use.list_exports(
        m.call("ListMaskGroupExports"), m.annotation.id, group.id, 2, page.next_page_token
    )
    assert (rest.items, rest.next_page_token) == ([made[0]], "")


async def test_an_outsider_cannot_list_exports(m: MaskWorld) -> None:
    group, _ = _complete_group(m)
    with pytest.raises(NotFound):
        await m.export_use_cases().list_exports(
            m.call("ListMaskGroupExports", m.outsider), m.annotation.id, group.id, 0, ""
        )


# -- CreateSegmentationUpload and ImportSegmentation -------------------------------------------

SEG_FILE = b"DICM a segmentation"


def _reader(*, study: str = STUDY, images: int = 2) -> FakeSegmentationReader:
    maps = {f"{SERIES}.{n}": FakeLabelMap(f"map{n}") for n in range(images)}
    read = SegmentationRead(
        sop_instance_uid="2.25.9", series_instance_uid="2.25.8", study_instance_uid=study,
        source_series_uid=SERIES, frame_of_reference_uid=None,
        segments=(SegmentInput(pixel_value=1, label="liver"),), algorithm_name=None,
        algorithm_version=None, content_label="LIVER", label_maps=maps,
    )  # fmt: skip
    return FakeSegmentationReader({SEG_FILE: read})


async def _ticket(m: MaskWorld, reader: FakeSegmentationReader) -> SegmentationTicket:
    call = m.call("CreateSegmentationUpload")
    return await m.import_use_cases(reader).create_upload(call, m.annotation.id, len(SEG_FILE), 120)


async def _import(
    m: MaskWorld, reader: FakeSegmentationReader, source: SourceRequest, *,
    request_id: str = "",
) -> MaskGroup:  # fmt: skip
    return await m.import_use_cases(reader).import_segmentation(
        m.call("ImportSegmentation"), m.annotation.id, source, group_name="", description="",
        request_id=request_id,
    )  # fmt: skip


async def test_a_segmentation_ticket_schedules_its_objects_deletion(m: MaskWorld) -> None:
    call = m.call("CreateSegmentationUpload")
    ticket = await m.import_use_cases(_reader()).create_upload(
        call, m.annotation.id, len(SEG_FILE), 120
    )
    key = segmentation_upload_key(m.project.id, m.annotation.id, ticket.upload_id)
    assert ticket.object_key == key
    assert ticket.expires_at == m.w.clock.now() + timedelta(seconds=120)
    (row,) = m.tables.outbox
    # Whatever the client does, the file goes an hour after the ticket ends.
    assert (row.object_key, row.next_attempt_at) == (key, ticket.expires_at + timedelta(hours=1))
    assert m.audit == [m.ok(call, resource_type="annotation", resource_ids=(m.annotation.id,))]


async def test_an_uploaded_segmentation_becomes_a_complete_group(m: MaskWorld) -> None:
    reader = _reader()
    ticket = await _ticket(m, reader)
    assert m.storage.post(ticket, SEG_FILE) == 204

    call = m.call("ImportSegmentation")
    group = await m.import_use_cases(reader).import_segmentation(
        call, m.annotation.id, SourceRequest("upload_id", upload_id=str(ticket.upload_id)),
        group_name="", description="", request_id="",
    )  # fmt: skip

    assert (group.slice_count, group.completed_slices, group.group_name) == (2, 2, "LIVER")
    masks = m.masks.all_masks()
    assert [(x.slice_index, x.sop_instance_uid) for x in masks] == [
        (0, f"{SERIES}.0"),
        (1, f"{SERIES}.1"),
    ]
    for mask in masks:
        assert mask.file_path.startswith(f"masks/p{m.project.id}/a{m.annotation.id}/imports/")
        assert m.storage.latest(mask.file_path) is not None
    # The uploaded file is queued at once, not only at its scheduled time.
    due_now = [r.object_key for r in m.tables.outbox if r.next_attempt_at <= m.w.clock.now()]
    assert due_now == [ticket.object_key]
    assert m.audit[-1] == m.ok(call, resource_type="mask_group", resource_ids=(group.id,))


async def test_a_retried_import_answers_with_the_first_group_without_reading_again(
    m: MaskWorld,
) -> None:
    reader = _reader()
    ticket = await _ticket(m, reader)
    m.storage.post(ticket, SEG_FILE)
    source = SourceRequest("upload_id", upload_id=str(ticket.upload_id))
    first = await _import(m, reader, source, request_id="imp-1")
    again = await _import(m, reader, source, request_id="imp-1")
    assert again == first
    assert reader.reads == 1
    assert len(m.tables.groups) == 1


@pytest.mark.parametrize(
    ("problem", "error", "message"),
    [
        ("nothing uploaded", FailedPrecondition, "no file was uploaded"),
        ("another study", FailedPrecondition, "belongs to another study"),
        ("not a seg", InvalidArgument, "upload_id: is not a DICOM Segmentation"),
        ("bad upload id", InvalidArgument, "upload_id: is not an upload id"),
        ("no source", InvalidArgument, "source"),
    ],
)
async def test_an_import_that_cannot_be_read_is_refused_and_stores_nothing(
    m: MaskWorld, problem: str, error: type[Exception], message: str
) -> None:
    reader = _reader(study="9.9.9" if problem == "another study" else STUDY)
    ticket = await _ticket(m, reader)
    if problem != "nothing uploaded":
        data = b"DICM something else" if problem == "not a seg" else SEG_FILE
        m.storage.post(ticket, data)
    source = SourceRequest("upload_id", upload_id=str(ticket.upload_id))
    if problem == "bad upload id":
        source = SourceRequest("upload_id", upload_id="nope")
    elif problem == "no source":
        source = SourceRequest(None)
    with pytest.raises(error, match=message):
        await _import(m, reader, source)
    assert m.tables.groups == {}
    assert m.storage.stored_keys("masks/") == []


async def test_slices_stored_before_storage_fails_are_removed_and_nothing_recorded(
    m: MaskWorld,
) -> None:
    reader = _reader()
    ticket = await _ticket(m, reader)
    m.storage.post(ticket, SEG_FILE)
    # The first slice is stored, the second write fails.
    m.storage.put_error = Unavailable("object storage unavailable, retry shortly")
    m.storage.puts_before_error = 1
    with pytest.raises(Unavailable):
        await _import(m, reader, SourceRequest("upload_id", upload_id=str(ticket.upload_id)))
    assert m.storage.calls.count("put_stream") == 2
    assert m.tables.groups == {}
    assert m.masks.all_masks() == []
    # Both keys are deleted at once and queued for the sweeper too.
    written = sorted(m.storage.deletes[-1])
    assert len(written) == 2
    assert all(
        key.startswith(f"masks/p{m.project.id}/a{m.annotation.id}/imports/") for key in written
    )
    assert m.storage.stored_keys("masks/") == []
    assert sorted(k for k in queued_keys(m.w.db) if k.startswith("masks/")) == written
