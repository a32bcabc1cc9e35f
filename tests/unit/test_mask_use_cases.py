"""MaskService's group, mask, ticket and download-link use cases on in-memory fakes: access
rules, idempotent creation, paging, what is queued for deletion, and the audit rows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

from pacs_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from pacs_grpc.domain.exports import NewExport, PacsStatus
from pacs_grpc.domain.identity import User
from pacs_grpc.domain.masks import MaskGroup, NewMask, UploadMethod, listing_prefix
from tests.fakes import builders
from tests.fakes.database import FakeIntegrityError
from tests.fakes.mask_builders import (
    ANNOTATOR,
    STUDY,
    MaskWorld,
    declaration,
    limits,
    new_group,
    png,
)
from tests.fakes.masks import queued_keys
from tests.fakes.storage import ENDPOINT, UPLOAD_ID_FIELD, md5


@pytest.fixture
def m() -> MaskWorld:
    return MaskWorld()


# -- CreateMaskGroup ----------------------------------------------------------------------------


async def test_a_created_group_is_stored_and_its_row_audited(m: MaskWorld) -> None:
    call = m.call("CreateMaskGroup")
    group = await m.groups().create_group(
        call, m.annotation.id, new_group(4, model_name=" nnU-Net ", version="2"), ""
    )
    assert m.tables.groups == {group.id: group}
    assert (group.annotation_id, group.slice_count, group.model_name, group.version) == (
        m.annotation.id,
        4,
        "nnU-Net",
        "2",
    )
    assert (group.mask_type, group.created_by, group.completed_slices) == (
        "segmentation",
        m.annotator.id,
        0,
    )
    assert m.audit == [m.ok(call, resource_type="mask_group", resource_ids=(group.id,))]


async def test_a_retried_create_returns_the_first_group(m: MaskWorld) -> None:
    first_call = m.call("CreateMaskGroup", request_id="rpc-1")
    first = await m.groups().create_group(first_call, m.annotation.id, new_group(), "req-1")
    m.w.clock.advance(3)
    retry_call = m.call("CreateMaskGroup", request_id="rpc-2")
    again = await m.groups().create_group(retry_call, m.annotation.id, new_group(), "req-1")
    assert again == first
    assert list(m.tables.groups) == [first.id]
    assert m.audit == [
        m.ok(c, resource_type="mask_group", resource_ids=(first.id,))
        for c in (first_call, retry_call)
    ]


async def test_a_request_id_reused_for_another_group_is_refused(m: MaskWorld) -> None:
    await m.groups().create_group(m.call("CreateMaskGroup"), m.annotation.id, new_group(), "req")
    call = m.call("CreateMaskGroup")
    with pytest.raises(InvalidArgument) as refused:
        await m.groups().create_group(call, m.annotation.id, new_group(5), "req")
    assert refused.value.field == "request_id"
    assert len(m.tables.groups) == 1
    assert len(m.audit) == 1


async def test_a_request_id_is_its_callers_own(m: MaskWorld) -> None:
    colleague = m.w.db.seed_user("carla")
    m.w.db.seed_member(m.project, colleague, ANNOTATOR)
    first = await m.groups().create_group(
        m.call("CreateMaskGroup"), m.annotation.id, new_group(), "req"
    )
    other = await m.groups().create_group(
        m.call("CreateMaskGroup", colleague), m.annotation.id, new_group(), "req"
    )
    assert first.id != other.id


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"slice_count": 0}, "mask_group.slice_count"),
        ({"group_name": "x" * 201}, "mask_group.group_name"),
        ({"modality": "M" * 17}, "mask_group.modality"),
    ],
)
async def test_a_bad_group_is_refused_naming_the_field_before_any_read(
    m: MaskWorld, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await m.groups().create_group(
            m.call("CreateMaskGroup"), m.annotation.id, new_group(**changes), ""
        )
    assert refused.value.field == field
    assert m.w.db.transactions_opened == 0


# -- who may do what ---------------------------------------------------------------------------

Action = Callable[[MaskWorld, User, int, int], Awaitable[Any]]


async def _get(m: MaskWorld, user: User, annotation_id: int, group_id: int) -> Any:
    return await m.groups().get_group(m.call("GetMaskGroup", user), annotation_id, group_id)


async def _list_masks(m: MaskWorld, user: User, annotation_id: int, group_id: int) -> Any:
    call = m.call("ListMasks", user)
    return await m.groups().list_masks(call, annotation_id, group_id, 0, "")


async def _delete(m: MaskWorld, user: User, annotation_id: int, group_id: int) -> Any:
    call = m.call("DeleteMaskGroup", user)
    return await m.group_trash().delete(call, annotation_id, group_id)


async def _tickets(m: MaskWorld, user: User, annotation_id: int, group_id: int) -> Any:
    return await m.urls().create_upload_urls(
        m.call("CreateUploadUrls", user), annotation_id, group_id, [declaration(0, png(0))],
        ttl_seconds=0, method=UploadMethod.POST,
    )  # fmt: skip


async def _downloads(m: MaskWorld, user: User, annotation_id: int, group_id: int) -> Any:
    call = m.call("CreateDownloadUrls", user)
    return await m.urls().download_urls(call, annotation_id, group_id, [], 0)


READS = [_get, _list_masks, _downloads]
WRITES = [_delete, _tickets]


@pytest.mark.parametrize("action", READS + WRITES)
async def test_an_outsider_gets_not_found_whether_or_not_the_group_exists(
    m: MaskWorld, action: Action
) -> None:
    group = m.seed_group()
    other_annotation = m.w.db.seed_annotation(m.project, m.annotator, study_uid=STUDY)
    messages = []
    for annotation_id, group_id in [
        (m.annotation.id, group.id),  # there, but not the outsider's
        (m.annotation.id, group.id + 100),  # no such group
        (other_annotation.id, group.id),  # a group of another annotation
    ]:
        with pytest.raises(NotFound) as refused:
            await action(m, m.outsider, annotation_id, group_id)
        messages.append(refused.value.message)
    assert messages == ["mask group not found"] * 3
    assert m.audit == []
    assert m.storage.calls == []


@pytest.mark.parametrize("action", WRITES)
async def test_a_viewer_may_read_but_not_write(m: MaskWorld, action: Action) -> None:
    group = m.seed_group()
    await _get(m, m.viewer, m.annotation.id, group.id)
    with pytest.raises(PermissionDenied, match="annotator"):
        await action(m, m.viewer, m.annotation.id, group.id)
    assert m.tables.groups == {group.id: group}
    assert m.tables.uploads == {}


async def test_a_viewer_may_not_create_a_group(m: MaskWorld) -> None:
    with pytest.raises(PermissionDenied):
        await m.groups().create_group(
            m.call("CreateMaskGroup", m.viewer), m.annotation.id, new_group(), ""
        )
    assert m.tables.groups == {}


@pytest.mark.parametrize("action", WRITES)
async def test_a_deactivated_project_refuses_writes_and_still_answers_reads(
    m: MaskWorld, action: Action
) -> None:
    group = m.seed_group()
    m.deactivate()
    for reader in READS:
        await reader(m, m.viewer, m.annotation.id, group.id)
    with pytest.raises(FailedPrecondition, match="deactivated"):
        await action(m, m.annotator, m.annotation.id, group.id)
    with pytest.raises(FailedPrecondition, match="deactivated"):
        await m.groups().create_group(m.call("CreateMaskGroup"), m.annotation.id, new_group(), "")
    assert m.tables.groups == {group.id: group}


@pytest.mark.parametrize("action", READS + WRITES)
async def test_a_platform_admin_acts_as_an_owner_without_membership(
    m: MaskWorld, action: Action
) -> None:
    group = m.seed_group()
    await action(m, m.admin, m.annotation.id, group.id)


async def test_a_refused_call_writes_no_audit_row_and_leaves_what_it_learnt_to_the_gate(
    m: MaskWorld,
) -> None:
    group = m.seed_group()
    call = m.call("DeleteMaskGroup", m.viewer)
    with pytest.raises(PermissionDenied):
        await m.group_trash().delete(call, m.annotation.id, group.id)
    assert m.audit == []
    assert not call.audit.recorded
    # What the gate writes as the denied row.
    denied = call.audit.entry("denied", "PERMISSION_DENIED")
    assert (denied.resource_type, denied.resource_ids, denied.project_id, denied.study_uid) == (
        "mask_group",
        (group.id,),
        m.project.id,
        STUDY,
    )


@pytest.mark.parametrize(
    ("annotation_id", "group_id", "field"), [(0, 1, "annotation_id"), (1, -1, "group_id")]
)
async def test_ids_that_cannot_exist_are_refused_naming_the_field(
    m: MaskWorld, annotation_id: int, group_id: int, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await _get(m, m.annotator, annotation_id, group_id)
    assert refused.value.field == field


# -- reading groups and masks ------------------------------------------------------------------


async def test_get_group_counts_its_recorded_slices_and_audits_the_group(m: MaskWorld) -> None:
    group = m.seed_group(3)
    m.seed_masks(group, [0, 2])
    call = m.call("GetMaskGroup", m.viewer)
    found = await m.groups().get_group(call, m.annotation.id, group.id)
    assert (found.completed_slices, found.complete) == (2, False)
    assert m.audit == [m.ok(call, resource_type="mask_group", resource_ids=(group.id,))]


async def _all_pages(
    fetch: Callable[[str], Awaitable[tuple[list[int], str]]],
) -> list[list[int]]:
    pages, token = [], ""
    while True:
        ids, token = await fetch(token)
        pages.append(ids)
        if not token:
            return pages


async def test_groups_come_a_page_at_a_time_in_id_order_each_page_audited(m: MaskWorld) -> None:
    groups = [m.seed_group() for _ in range(5)]
    other = m.w.db.seed_annotation(m.project, m.annotator, study_uid=STUDY)
    m.seed_group(annotation=other)
    calls = []

    async def fetch(token: str) -> tuple[list[int], str]:
        calls.append(m.call("ListMaskGroups", m.viewer))
        page = await m.groups().list_groups(calls[-1], m.annotation.id, 2, token)
        return [g.id for g in page.items], page.next_page_token

    pages = await _all_pages(fetch)
    ids = [g.id for g in groups]
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    assert m.audit == [
        m.ok(c, resource_type="mask_group", resource_ids=tuple(p))
        for c, p in zip(calls, pages, strict=True)
    ]


async def test_a_group_page_token_for_another_annotation_is_refused(m: MaskWorld) -> None:
    for _ in range(3):
        m.seed_group()
    other = m.w.db.seed_annotation(m.project, m.annotator, study_uid=STUDY)
    page = await m.groups().list_groups(m.call("ListMaskGroups"), m.annotation.id, 1, "")
    with pytest.raises(InvalidArgument, match="different filters") as refused:
        await m.groups().list_groups(m.call("ListMaskGroups"), other.id, 1, page.next_page_token)
    assert refused.value.field == "page_token"


@pytest.mark.parametrize(("page_size", "token"), [(51, ""), (-1, ""), (0, "garbage")])
async def test_bad_paging_of_masks_is_refused_naming_the_field(
    m: MaskWorld, page_size: int, token: str
) -> None:
    group = m.seed_group()
    with pytest.raises(InvalidArgument) as refused:
        await m.groups().list_masks(
            m.call("ListMasks"), m.annotation.id, group.id, page_size, token
        )
    assert refused.value.field in ("page_size", "page_token")


async def test_masks_come_a_page_at_a_time_in_slice_order(m: MaskWorld) -> None:
    group = m.seed_group(6)
    masks = m.seed_masks(group, [4, 0, 5, 2, 1])
    by_slice = {mask.slice_index: mask.id for mask in masks}
    calls = []

    async def fetch(token: str) -> tuple[list[int], str]:
        calls.append(m.call("ListMasks", m.viewer))
        page = await m.groups().list_masks(calls[-1], m.annotation.id, group.id, 2, token)
        return [mask.id for mask in page.items], page.next_page_token

    pages = await _all_pages(fetch)
    assert pages == [[by_slice[0], by_slice[1]], [by_slice[2], by_slice[4]], [by_slice[5]]]
    # The rows name the masks on the page, not the group they were read through.
    assert m.audit == [
        m.ok(c, resource_type="mask", resource_ids=tuple(p))
        for c, p in zip(calls, pages, strict=True)
    ]


async def test_get_mask_finds_only_masks_of_the_named_group(m: MaskWorld) -> None:
    group, other = m.seed_group(), m.seed_group()
    (mask,) = m.seed_masks(group, [1])
    call = m.call("GetMask", m.viewer)
    assert await m.groups().get_mask(call, m.annotation.id, group.id, mask.id) == mask
    assert m.audit == [m.ok(call, resource_type="mask", resource_ids=(mask.id,))]
    with pytest.raises(NotFound, match="mask not found"):
        await m.groups().get_mask(m.call("GetMask"), m.annotation.id, other.id, mask.id)


# -- DeleteMaskGroup ---------------------------------------------------------------------------


async def test_purging_a_group_queues_its_masks_pending_tickets_and_exports(m: MaskWorld) -> None:
    group, kept = m.seed_group(3), m.seed_group(1)
    masks = m.seed_masks(group, [0, 1])
    m.seed_masks(kept, [0])
    tickets = await m.urls().create_upload_urls(
        m.call("CreateUploadUrls"), m.annotation.id, group.id, [declaration(2, png(2))],
        ttl_seconds=0, method=UploadMethod.POST,
    )  # fmt: skip
    async with m.w.transactions.transaction() as conn:
        export = await m.exports.insert(conn, group.id, _export("exports/g.dcm"), m.annotator.id)
    before = len(m.audit)

    call = m.call("DeleteMaskGroup", m.admin)
    await m.group_trash().delete(call, m.annotation.id, group.id, purge=True)

    assert queued_keys(m.w.db) == [
        masks[0].file_path,
        masks[1].file_path,
        tickets[0].object_key,
        export.object_key,
    ]
    assert list(m.tables.groups) == [kept.id]
    assert {mask.mask_group_id for mask, _ in m.tables.masks.values()} == {kept.id}
    assert (m.tables.uploads, m.tables.exports) == ({}, {})
    # The objects stay until the sweeper deletes them; the call itself never asks storage.
    assert "delete" not in m.storage.calls
    assert m.audit[before:] == [
        m.ok(call, resource_type="mask_group_purge", resource_ids=(group.id,))
    ]
    assert ("mask_group", group.id) in m.w.db.committed[-1].locks


async def test_purging_the_annotation_queues_every_groups_objects_and_removes_them(
    m: MaskWorld,
) -> None:
    group, other = m.seed_group(3), m.seed_group(1)
    masks = m.seed_masks(group, [0]) + m.seed_masks(other, [0])
    urls = m.urls()
    tickets = await urls.create_upload_urls(
        m.call("CreateUploadUrls"), m.annotation.id, group.id,
        [declaration(1, png(1)), declaration(2, png(2))], ttl_seconds=0,
        method=UploadMethod.POST,
    )  # fmt: skip
    # Slice 1's ticket is completed: its object is its mask's, queued once, as the mask.
    assert m.storage.post(tickets[0], png(1)) == 204
    _, completed = await m.completion().complete_upload(
        m.call("CompleteUpload"), m.annotation.id, group.id, [(str(tickets[0].upload_id), 8, 8, "")]
    )
    async with m.w.transactions.transaction() as conn:
        export = await m.exports.insert(conn, other.id, _export("exports/o.dcm"), m.annotator.id)
    elsewhere = m.w.db.seed_annotation(m.project, m.annotator, study_uid=STUDY)
    kept = m.seed_group(1, annotation=elsewhere)
    m.seed_masks(kept, [0])

    annotations = builders.annotation_history(m.w)
    queued = await annotations.delete(
        m.call("DeleteAnnotation", m.admin), m.annotation.id, "", purge=True
    )

    expected = [*(x.file_path for x in masks + completed), tickets[1].object_key, export.object_key]
    assert sorted(queued_keys(m.w.db)) == sorted(expected)
    assert queued == len(expected) == 5
    # Due at once, like any deletion's rows: the sweeper's next round deletes the objects.
    assert {row.next_attempt_at for row in m.tables.outbox} == {m.w.clock.now()}
    await m.sweeper().sweep_once()
    assert queued_keys(m.w.db) == []
    assert sorted(m.storage.deletes[-1]) == sorted(expected)
    assert m.storage.stored_keys("masks/") == [x.file_path for x in m.masks.all_masks()]
    assert list(m.tables.groups) == [kept.id]
    assert {mask.mask_group_id for mask, _ in m.tables.masks.values()} == {kept.id}
    assert (m.tables.uploads, m.tables.exports) == ({}, {})
    for gone in (group, other):
        with pytest.raises(NotFound, match="mask group not found"):
            await _get(m, m.annotator, m.annotation.id, gone.id)


async def test_a_failed_annotation_delete_keeps_its_groups_and_queues_nothing(
    m: MaskWorld,
) -> None:
    group = m.seed_group(1)
    m.seed_masks(group, [0])
    m.w.db.fail_next("events.record", Unavailable("database unavailable"))
    annotations = builders.annotation_history(m.w)
    with pytest.raises(Unavailable):
        await annotations.delete(m.call("DeleteAnnotation"), m.annotation.id, "")
    assert list(m.tables.groups) == [group.id]
    assert queued_keys(m.w.db) == []
    assert (await _get(m, m.annotator, m.annotation.id, group.id)).completed_slices == 1


async def test_masks_for_a_group_that_is_gone_record_nothing_rather_than_fail(
    m: MaskWorld,
) -> None:
    # What CompleteUpload meets when the group is deleted between its checks and its record:
    # the tickets went with the group, so the statement inserts no row and breaks no key.
    group = m.seed_group(1)
    tickets = await m.urls().create_upload_urls(
        m.call("CreateUploadUrls"), m.annotation.id, group.id, [declaration(0, png(0))],
        ttl_seconds=0, method=UploadMethod.POST,
    )  # fmt: skip
    pending = m.tables.uploads[tickets[0].upload_id]
    new = NewMask(pending, pending.object_key, 10, md5(png(0)), 8, 8, "v1")
    async with m.w.transactions.transaction() as conn:
        await m.masks.delete_group(conn, group.id)
        assert await m.masks.record_masks(conn, group.id, [new]) == []
        with pytest.raises(FakeIntegrityError):
            await m.masks.record_masks(conn, group.id, [new], from_tickets=False)


def _export(key: str) -> NewExport:
    return NewExport(
        object_key=key, object_version="v9", size_bytes=10, seg_series_uid="2.25.1",
        seg_sop_instance_uid="2.25.2", series_number=9001, segment_count=1,
        pacs_status=PacsStatus.NOT_REQUESTED, pacs_failure_reason=None,
    )  # fmt: skip


# -- CreateUploadUrls --------------------------------------------------------------------------


async def test_post_tickets_are_recorded_and_signed_for_key_type_size_and_upload_id(
    m: MaskWorld,
) -> None:
    group = m.seed_group(3)
    call = m.call("CreateUploadUrls")
    declared = [declaration(2, png(2), label_name="lung"), declaration(0, png(0, 100))]
    tickets = await m.urls().create_upload_urls(
        call, m.annotation.id, group.id, declared, ttl_seconds=60, method=UploadMethod.POST
    )
    expires_at = m.w.clock.now() + timedelta(seconds=60)
    assert [t.slice_index for t in tickets] == [2, 0]
    prefix = f"masks/p{m.project.id}/a{m.annotation.id}/g{group.id}/uploads/"
    # One folder per call: completing these lists that folder alone.
    batch = tickets[0].object_key.removeprefix(prefix).split("/")[0]
    assert UUID(batch)
    for ticket, item in zip(tickets, declared, strict=True):
        assert ticket.object_key == f"{prefix}{batch}/{ticket.upload_id}"
        assert (ticket.url, ticket.expires_at, ticket.headers) == (ENDPOINT, expires_at, {})
        assert ticket.fields[UPLOAD_ID_FIELD] == str(ticket.upload_id)
        recorded = m.tables.uploads[ticket.upload_id]
        assert (recorded.object_key, recorded.size_bytes, recorded.slice_index) == (
            ticket.object_key,
            item.size_bytes,
            item.slice_index,
        )
        assert (recorded.method, recorded.expires_at, recorded.completed_at) == (
            "POST",
            expires_at,
            None,
        )
    assert m.tables.uploads[tickets[0].upload_id].label_name == "lung"
    assert m.audit == [m.ok(call, resource_type="mask_group", resource_ids=(group.id,))]
    assert m.storage.calls == []


async def test_put_tickets_need_the_operators_opt_in_and_a_declared_md5(m: MaskWorld) -> None:
    group = m.seed_group()
    data = png(0)

    async def ask(use: Any, md5: str | None) -> Any:
        return await use.create_upload_urls(
            m.call("CreateUploadUrls"), m.annotation.id, group.id,
            [declaration(0, data, md5=md5)], ttl_seconds=0, method=UploadMethod.PUT,
        )  # fmt: skip

    with pytest.raises(InvalidArgument, match="not enabled") as refused:
        await ask(m.urls(), "a" * 32)
    assert refused.value.field == "method"
    opted = m.urls(mask_limits=limits(allow_put_uploads=True))
    with pytest.raises(InvalidArgument) as refused:
        await ask(opted, None)
    assert refused.value.field == "slices[0].md5"
    assert m.tables.uploads == {}
    (ticket,) = await ask(opted, "A" * 32)
    assert ticket.headers == {"Content-Type": "image/png"}
    assert m.tables.uploads[ticket.upload_id].md5 == "a" * 32


@pytest.mark.parametrize(
    ("declared", "field"),
    [
        ([declaration(3, png(0))], "slices[0].slice_index"),
        ([declaration(0, png(0)), declaration(0, png(1))], "slices[1].slice_index"),
        ([declaration(0, b"")], "slices[0].size_bytes"),
        ([declaration(0, png(0), content_type="text/html")], "slices[0].content_type"),
        ([declaration(0, png(0), md5="nope")], "slices[0].md5"),
        ([], "slices"),
    ],
)
async def test_bad_slices_are_refused_naming_the_field_and_nothing_is_recorded(
    m: MaskWorld, declared: list[Any], field: str
) -> None:
    group = m.seed_group(3)
    with pytest.raises(InvalidArgument) as refused:
        await m.urls().create_upload_urls(
            m.call("CreateUploadUrls"), m.annotation.id, group.id, declared, ttl_seconds=0,
            method=UploadMethod.POST,
        )  # fmt: skip
    assert refused.value.field == field
    assert m.tables.uploads == {}
    assert m.audit == []


@pytest.mark.parametrize("ttl_seconds", [-1, 3601])
async def test_a_ticket_lifetime_past_the_longest_is_refused(
    m: MaskWorld, ttl_seconds: int
) -> None:
    group = m.seed_group()
    with pytest.raises(InvalidArgument) as refused:
        await _tickets_with_ttl(m, group, ttl_seconds)
    assert refused.value.field == "ttl_seconds"


async def _tickets_with_ttl(m: MaskWorld, group: MaskGroup, ttl_seconds: int) -> Any:
    return await m.urls().create_upload_urls(
        m.call("CreateUploadUrls"), m.annotation.id, group.id, [declaration(0, png(0))],
        ttl_seconds=ttl_seconds, method=UploadMethod.POST,
    )  # fmt: skip


# -- CreateDownloadUrls ------------------------------------------------------------------------


async def test_download_links_are_signed_for_the_recorded_version(m: MaskWorld) -> None:
    group = m.seed_group(3)
    masks = m.seed_masks(group, [0, 1, 2])
    # A later overwrite adds a version; the links still name the recorded one.
    m.storage.overwrite(masks[1].file_path, b"overwritten")
    call = m.call("CreateDownloadUrls", m.viewer)
    page = await m.urls().download_urls(
        call, m.annotation.id, group.id, [masks[2].id, masks[1].id], 120
    )
    assert [link.mask for link in page.items] == [masks[1], masks[2]]
    for link in page.items:
        assert f"versionId={link.mask.object_version}&" in link.url
        assert link.url.startswith(f"{ENDPOINT}/{link.mask.file_path}?")
        assert link.expires_at == m.w.clock.now() + timedelta(seconds=120)
    assert page.next_page_token == ""
    assert m.audit == [m.ok(call, resource_type="mask", resource_ids=(masks[1].id, masks[2].id))]


async def test_a_whole_group_is_signed_a_page_at_a_time(m: MaskWorld) -> None:
    group = m.seed_group(5)
    masks = m.seed_masks(group, [3, 0, 4, 1, 2])
    ids = {mask.slice_index: mask.id for mask in masks}

    async def fetch(token: str) -> tuple[list[int], str]:
        page = await m.urls().download_urls(
            m.call("CreateDownloadUrls"), m.annotation.id, group.id, [], 0, page_size=2,
            page_token=token,
        )  # fmt: skip
        assert all(
            link.expires_at == m.w.clock.now() + timedelta(minutes=10) for link in page.items
        )
        return [link.mask.id for link in page.items], page.next_page_token

    assert await _all_pages(fetch) == [[ids[0], ids[1]], [ids[2], ids[3]], [ids[4]]]


async def test_without_a_page_size_a_group_is_signed_up_to_the_per_call_limit(
    m: MaskWorld,
) -> None:
    group = m.seed_group(5)
    m.seed_masks(group, range(5))
    urls = m.urls(mask_limits=limits(max_slices_per_call=3))
    page = await urls.download_urls(m.call("CreateDownloadUrls"), m.annotation.id, group.id, [], 0)
    assert [link.mask.slice_index for link in page.items] == [0, 1, 2]
    assert page.next_page_token


@pytest.mark.parametrize("foreign", ["other group", "missing"])
async def test_a_mask_id_not_of_the_group_fails_the_whole_call(m: MaskWorld, foreign: str) -> None:
    group, other = m.seed_group(), m.seed_group()
    (mask,) = m.seed_masks(group, [0])
    (elsewhere,) = m.seed_masks(other, [0])
    wrong = elsewhere.id if foreign == "other group" else elsewhere.id + 50
    with pytest.raises(NotFound, match="mask not found"):
        await m.urls().download_urls(
            m.call("CreateDownloadUrls"), m.annotation.id, group.id, [mask.id, wrong], 0
        )
    assert m.audit == []


@pytest.mark.parametrize(
    ("mask_ids", "options", "field"),
    [
        (list(range(1, 12)), {}, "mask_ids"),
        ([1, 0], {}, "mask_ids[1]"),
        ([1], {"page_token": "abc"}, "page_token"),
        ([], {"page_size": 11}, "page_size"),
        ([], {"page_token": "not-ours"}, "page_token"),
    ],
)
async def test_bad_download_requests_are_refused_naming_the_field(
    m: MaskWorld, mask_ids: list[int], options: dict[str, Any], field: str
) -> None:
    group = m.seed_group()
    with pytest.raises(InvalidArgument) as refused:
        await m.urls().download_urls(
            m.call("CreateDownloadUrls"), m.annotation.id, group.id, mask_ids, 0, **options
        )
    assert refused.value.field == field


async def test_a_download_page_token_of_another_group_is_refused(m: MaskWorld) -> None:
    group, other = m.seed_group(3), m.seed_group(3)
    m.seed_masks(group, [0, 1, 2])
    page = await m.urls().download_urls(
        m.call("CreateDownloadUrls"), m.annotation.id, group.id, [], 0, page_size=1
    )
    with pytest.raises(InvalidArgument, match="different filters") as refused:
        await m.urls().download_urls(
            m.call("CreateDownloadUrls"), m.annotation.id, other.id, [], 0,
            page_token=page.next_page_token,
        )  # fmt: skip
    assert refused.value.field == "page_token"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # One call's tickets: their folder alone.
        (["u/b1/x", "u/b1/y"], "u/b1/"),
        (["u/b1/x"], "u/b1/"),
        # Two calls' tickets, or keys from before batches had folders: the whole group.
        (["u/b1/x", "u/b2/y"], "u/"),
        (["u/x", "u/b1/y"], "u/"),
        # Nothing to narrow it by, or keys outside the group: never past the group's folder.
        ([], "u/"),
        (["elsewhere/b1/x"], "u/"),
    ],
)
def test_completion_lists_the_deepest_folder_holding_every_upload(
    keys: list[str], expected: str
) -> None:
    assert listing_prefix(keys, within="u/") == expected
