"""CompleteUpload on in-memory fakes: what storage holds is checked against each ticket and
recorded all or nothing; tickets expire on the FakeClock, with no waiting."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pacs_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from pacs_grpc.domain.masks import Mask, MaskGroup, SliceDeclaration, UploadMethod
from pacs_grpc.domain.pacs import PacsValidation
from pacs_grpc.services.mask_completion import ReportedUpload
from pacs_grpc.services.mask_urls import Ticket
from tests.fakes.mask_builders import SERIES, STUDY, MaskWorld, declaration, limits, png
from tests.fakes.storage import md5

TTL = 60


@pytest.fixture
def m() -> MaskWorld:
    return MaskWorld()


async def _tickets(
    m: MaskWorld,
    group: MaskGroup,
    declared: list[SliceDeclaration],
    *,
    method: UploadMethod = UploadMethod.POST,
) -> list[Ticket]:
    urls = m.urls(mask_limits=limits(allow_put_uploads=True))
    return await urls.create_upload_urls(
        m.call("CreateUploadUrls"), m.annotation.id, group.id, declared, ttl_seconds=TTL,
        method=method,
    )  # fmt: skip


async def _uploaded(m: MaskWorld, group: MaskGroup, images: list[bytes]) -> list[Ticket]:
    """Tickets for slices 0.. of `images`, each uploaded by its client."""
    tickets = await _tickets(m, group, [declaration(i, d) for i, d in enumerate(images)])
    assert [m.storage.post(t, d) for t, d in zip(tickets, images, strict=True)] == [204] * len(
        images
    )
    return tickets


def _reported(tickets: list[Ticket], **overrides: Any) -> list[ReportedUpload]:
    return [
        (str(t.upload_id), overrides.get("width", 8), overrides.get("height", 8), "")
        for t in tickets
    ]


async def _complete(
    m: MaskWorld, group: MaskGroup, reported: list[ReportedUpload], **options: Any
) -> tuple[MaskGroup, list[Mask]]:
    call = m.call("CompleteUpload", options.pop("user", None))
    return await m.completion(**options).complete_upload(call, m.annotation.id, group.id, reported)


async def test_uploaded_slices_are_recorded_with_the_version_checked(m: MaskWorld) -> None:
    group = m.seed_group(3)
    images = [png(0), png(1, 80), png(2)]
    tickets = await _uploaded(m, group, images)
    call = m.call("CompleteUpload")

    done, masks = await m.completion().complete_upload(
        call, m.annotation.id, group.id, _reported(tickets, width=512, height=256)
    )

    assert (done.id, done.completed_slices, done.complete) == (group.id, 3, True)
    assert [mask.slice_index for mask in masks] == [0, 1, 2]
    for mask, ticket, image in zip(masks, tickets, images, strict=True):
        stored = m.storage.latest(ticket.object_key)
        assert stored is not None
        assert (mask.file_path, mask.file_size, mask.checksum) == (
            ticket.object_key,
            len(image),
            md5(image),
        )
        assert (mask.object_version, mask.width, mask.height) == (stored.version_id, 512, 256)
        assert m.tables.uploads[ticket.upload_id].completed_at == m.w.clock.now()
    assert m.masks.all_masks() == masks
    # One listing serves every POST upload; each PNG check reads the version it records.
    assert m.storage.calls.count("latest_versions") == 1
    assert sorted(m.storage.reads) == sorted((x.file_path, x.object_version) for x in masks)
    assert m.audit[-1] == m.ok(
        call, resource_type="mask", resource_ids=tuple(mask.id for mask in masks)
    )


async def test_one_bad_slice_refuses_the_whole_completion_naming_it(m: MaskWorld) -> None:
    group = m.seed_group(3)
    tickets = await _tickets(m, group, [declaration(i, png(i)) for i in range(3)])
    m.storage.post(tickets[0], png(0))
    m.storage.post(tickets[2], png(2))
    audited = len(m.audit)

    with pytest.raises(FailedPrecondition) as refused:
        await _complete(m, group, _reported(tickets))

    assert refused.value.message == "uploads not accepted: slice 1: no object was uploaded"
    assert m.masks.all_masks() == []
    assert all(u.completed_at is None for u in m.tables.uploads.values())
    assert len(m.audit) == audited
    # Uploading the missing slice makes the same request go through.
    m.storage.post(tickets[1], png(1))
    _, masks = await _complete(m, group, _reported(tickets))
    assert len(masks) == 3


async def test_content_that_is_not_a_png_is_refused_when_the_check_is_on(m: MaskWorld) -> None:
    group = m.seed_group(2)
    fake = b"GIF89a" + bytes(58)
    tickets = await _tickets(m, group, [declaration(0, png(0)), declaration(1, fake)])
    m.storage.post(tickets[0], png(0))
    m.storage.post(tickets[1], fake)
    with pytest.raises(FailedPrecondition, match=r"^uploads not accepted: slice 1: content is"):
        await _complete(m, group, _reported(tickets))
    assert m.masks.all_masks() == []
    _, masks = await _complete(
        m, group, _reported(tickets), mask_limits=limits(check_png_signature=False)
    )
    assert len(masks) == 2


async def test_every_refused_slice_is_listed(m: MaskWorld) -> None:
    group = m.seed_group(3)
    tickets = await _tickets(m, group, [declaration(i, png(i)) for i in range(3)])
    m.storage.post(tickets[1], png(1))
    with pytest.raises(FailedPrecondition) as refused:
        await _complete(m, group, _reported(tickets))
    message = refused.value.message
    assert message.startswith("uploads not accepted: ")
    # Listed in the order of the tickets' ids (the store's order), not of their slices.
    assert sorted(message.removeprefix("uploads not accepted: ").split("; ")) == [
        "slice 0: no object was uploaded",
        "slice 2: no object was uploaded",
    ]


# -- expiry, on the fake clock -----------------------------------------------------------------


async def test_a_ticket_past_its_expiry_cannot_be_completed(m: MaskWorld) -> None:
    group = m.seed_group(3)
    tickets = await _uploaded(m, group, [png(0), png(1), png(2)])
    m.w.clock.advance(TTL - 1)
    # Still valid a second before: nothing refused on time alone.
    fresh = await _tickets(m, group, [declaration(2, png(2))])
    m.storage.post(fresh[0], png(2))
    m.w.clock.advance(1)

    with pytest.raises(FailedPrecondition) as refused:
        await _complete(m, group, _reported(tickets[:2] + fresh))

    assert refused.value.message == "tickets expired for slices 0, 1; ask for new ones"
    assert m.masks.all_masks() == []
    # Refused before storage was asked about any upload.
    assert "latest_versions" not in m.storage.calls


async def test_a_ticket_completes_until_its_last_second(m: MaskWorld) -> None:
    group = m.seed_group(1)
    tickets = await _uploaded(m, group, [png(0)])
    m.w.clock.advance(TTL - 0.5)
    _, masks = await _complete(m, group, _reported(tickets))
    assert len(masks) == 1
    # Once completed, expiry no longer matters: a retry still answers with the mask.
    m.w.clock.advance(3600)
    _, again = await _complete(m, group, _reported(tickets))
    assert again == masks


async def test_storage_refuses_an_upload_through_an_expired_ticket(m: MaskWorld) -> None:
    group = m.seed_group(1)
    (ticket,) = await _tickets(m, group, [declaration(0, png(0))])
    m.w.clock.advance(TTL)
    assert m.storage.post(ticket, png(0)) == 403
    assert m.storage.stored_keys() == []


# -- what the request may name -----------------------------------------------------------------


async def test_an_upload_id_named_twice_is_refused_naming_the_second(m: MaskWorld) -> None:
    group = m.seed_group(2)
    tickets = await _uploaded(m, group, [png(0), png(1)])
    reported = _reported(tickets)
    with pytest.raises(InvalidArgument) as refused:
        await _complete(m, group, [reported[0], reported[1], reported[0]])
    assert refused.value.field == "uploads[2].upload_id"
    assert m.w.db.transactions_opened == 1  # the ticket call only
    assert m.storage.calls == []


@pytest.mark.parametrize(
    ("reported", "field"),
    [
        ([("not-a-uuid", 8, 8, "")], "uploads[0].upload_id"),
        ([(str(uuid.uuid4()), 0, 8, "")], "uploads[0].width"),
        ([(str(uuid.uuid4()), 8, 70_000, "")], "uploads[0].height"),
        ([(str(uuid.uuid4()), 8, 8, "xyz")], "uploads[0].md5"),
        ([], "uploads"),
    ],
)
async def test_bad_reports_are_refused_naming_the_field(
    m: MaskWorld, reported: list[ReportedUpload], field: str
) -> None:
    group = m.seed_group(1)
    with pytest.raises(InvalidArgument) as refused:
        await _complete(m, group, reported)
    assert refused.value.field == field


async def test_tickets_of_another_group_are_not_this_groups(m: MaskWorld) -> None:
    group, other = m.seed_group(1), m.seed_group(1)
    tickets = await _uploaded(m, other, [png(0)])
    with pytest.raises(FailedPrecondition, match="1 upload id"):
        await _complete(m, group, _reported(tickets))
    assert m.masks.all_masks() == []


async def test_a_viewer_may_not_complete_and_storage_is_not_asked(m: MaskWorld) -> None:
    group = m.seed_group(1)
    tickets = await _uploaded(m, group, [png(0)])
    with pytest.raises(PermissionDenied):
        await _complete(m, group, _reported(tickets), user=m.viewer)
    assert m.storage.calls == []


# -- retries and races -------------------------------------------------------------------------


async def test_a_retried_completion_answers_with_the_masks_first_recorded(m: MaskWorld) -> None:
    group = m.seed_group(2)
    tickets = await _uploaded(m, group, [png(0), png(1)])
    _, first = await _complete(m, group, _reported(tickets))
    m.w.clock.advance(5)
    call = m.call("CompleteUpload", request_id="rpc-2")
    done, again = await m.completion().complete_upload(
        call, m.annotation.id, group.id, _reported(tickets)
    )
    assert again == first
    assert done.completed_slices == 2
    assert len(m.masks.all_masks()) == 2
    assert m.audit[-1] == m.ok(call, resource_type="mask", resource_ids=tuple(x.id for x in first))


async def test_slices_a_concurrent_completion_recorded_come_back_as_its_masks(
    m: MaskWorld,
) -> None:
    group = m.seed_group(3)
    tickets = await _uploaded(m, group, [png(0), png(1), png(2)])
    rival: list[Mask] = []

    async def rival_completes_slice_1() -> None:
        # Between this call's storage checks and its transaction.
        _, masks = await _complete(m, group, _reported(tickets[1:2]))
        rival.extend(masks)

    m.storage.after_listing.append(rival_completes_slice_1)
    _, masks = await _complete(m, group, _reported(tickets))

    assert [x.slice_index for x in masks] == [0, 1, 2]
    assert masks[1] == rival[0]
    assert m.masks.all_masks() == masks


async def test_a_slice_recorded_through_another_ticket_refuses_the_completion(
    m: MaskWorld,
) -> None:
    group = m.seed_group(1)
    first = await _uploaded(m, group, [png(0)])
    second = await _uploaded(m, group, [png(5)])
    await _complete(m, group, _reported(first))
    with pytest.raises(FailedPrecondition, match="already has a recorded mask"):
        await _complete(m, group, _reported(second))
    assert m.tables.uploads[second[0].upload_id].completed_at is None


# -- what storage holds ------------------------------------------------------------------------


async def test_an_unversioned_bucket_refuses_completions_as_unavailable(m: MaskWorld) -> None:
    m.storage.versioned = False
    group = m.seed_group(1)
    tickets = await _uploaded(m, group, [png(0)])
    with pytest.raises(Unavailable, match="misconfigured"):
        await _complete(m, group, _reported(tickets))
    assert m.masks.all_masks() == []


async def test_storage_down_is_unavailable_and_records_nothing(m: MaskWorld) -> None:
    group = m.seed_group(1)
    tickets = await _uploaded(m, group, [png(0)])
    m.storage.down = True
    with pytest.raises(Unavailable):
        await _complete(m, group, _reported(tickets))
    assert m.masks.all_masks() == []


async def test_the_png_check_reads_the_version_it_records_not_a_later_overwrite(
    m: MaskWorld,
) -> None:
    group = m.seed_group(1)
    (ticket,) = await _uploaded(m, group, [png(0)])
    checked = m.storage.latest(ticket.object_key)
    assert checked is not None

    async def overwrite() -> None:
        # The same still-valid ticket used again, right after the listing.
        m.storage.post(ticket, b"GIF89a" + bytes(58))

    m.storage.after_listing.append(overwrite)
    _, (mask,) = await _complete(m, group, _reported([ticket]))

    assert m.storage.reads == [(ticket.object_key, checked.version_id)]
    assert (mask.object_version, mask.checksum) == (checked.version_id, checked.etag)


async def test_a_listed_png_whose_checked_version_is_not_one_is_refused(m: MaskWorld) -> None:
    group = m.seed_group(1)
    (ticket,) = await _tickets(m, group, [declaration(0, png(0))])
    m.storage.post(ticket, b"GIF89a" + bytes(58))

    async def overwrite_with_a_png() -> None:
        m.storage.post(ticket, png(0))

    m.storage.after_listing.append(overwrite_with_a_png)
    with pytest.raises(FailedPrecondition, match="content is not a PNG image"):
        await _complete(m, group, _reported([ticket]))


# -- PUT tickets: each object examined on its own -----------------------------------------------


async def _put_ticket(m: MaskWorld, group: MaskGroup, declared: bytes) -> Ticket:
    (ticket,) = await _tickets(
        m, group, [declaration(0, declared, md5=md5(declared))], method=UploadMethod.PUT
    )
    return ticket


@pytest.mark.parametrize(
    ("sent", "problem"),
    [
        (png(0)[:-1], "size is 63 bytes, 64 were declared"),
        (png(1), "checksum differs from the declared MD5"),
    ],
)
async def test_a_put_upload_must_be_what_its_ticket_declared(
    m: MaskWorld, sent: bytes, problem: str
) -> None:
    group = m.seed_group(1)
    ticket = await _put_ticket(m, group, png(0))
    assert m.storage.put(ticket, sent) == 200
    with pytest.raises(FailedPrecondition, match=f"slice 0: {problem}"):
        await _complete(m, group, _reported([ticket]))
    assert m.masks.all_masks() == []


async def test_a_put_upload_of_another_content_type_is_refused(m: MaskWorld) -> None:
    group = m.seed_group(1)
    ticket = await _put_ticket(m, group, png(0))
    m.storage.put(ticket, png(0), content_type="text/html")
    with pytest.raises(FailedPrecondition, match="content type differs"):
        await _complete(m, group, _reported([ticket]))


async def test_an_object_carrying_another_tickets_upload_id_is_never_recorded(
    m: MaskWorld,
) -> None:
    group = m.seed_group(1)
    ticket = await _put_ticket(m, group, png(0))
    # A server-side copy keeps its source's metadata, the source's upload id included.
    m.storage.overwrite(ticket.object_key, png(0), upload_id=str(uuid.uuid4()))
    with pytest.raises(FailedPrecondition, match="not uploaded through this ticket"):
        await _complete(m, group, _reported([ticket]))


async def test_a_good_put_upload_is_recorded_without_a_listing(m: MaskWorld) -> None:
    group = m.seed_group(1)
    ticket = await _put_ticket(m, group, png(0))
    m.storage.put(ticket, png(0))
    _, (mask,) = await _complete(m, group, _reported([ticket]))
    assert mask.checksum == md5(png(0))
    assert "latest_versions" not in m.storage.calls


# -- the PACS ----------------------------------------------------------------------------------


async def test_with_the_pacs_enforced_slices_are_bound_to_their_images(m: MaskWorld) -> None:
    series = m.pacs.add_series(STUDY, SERIES, images=3)
    group = m.seed_group(3)
    tickets = await _uploaded(m, group, [png(0), png(1), png(2)])
    _, masks = await _complete(m, group, _reported(tickets), pacs=PacsValidation.ENFORCE)
    # Bound along the slice normal, not in the order the PACS lists its images.
    by_position = sorted(series.instances, key=lambda i: i.position or ())
    assert [x.sop_instance_uid for x in masks] == [i.sop_instance_uid for i in by_position]


async def test_with_the_pacs_enforced_a_slice_of_another_size_refuses_all(m: MaskWorld) -> None:
    m.pacs.add_series(STUDY, SERIES, images=2)
    group = m.seed_group(2)
    tickets = await _uploaded(m, group, [png(0), png(1)])
    reported = _reported(tickets)
    reported[1] = (reported[1][0], 16, 8, "")
    with pytest.raises(FailedPrecondition, match=r"slice 1: size is 16x8, its image is 8x8"):
        await _complete(m, group, reported, pacs=PacsValidation.ENFORCE)
    assert m.masks.all_masks() == []


async def test_an_unreachable_pacs_refuses_an_enforced_completion_as_unavailable(
    m: MaskWorld,
) -> None:
    m.pacs.add_series(STUDY, SERIES, images=1)
    m.pacs.unreachable = True
    group = m.seed_group(1)
    tickets = await _uploaded(m, group, [png(0)])
    with pytest.raises(Unavailable):
        await _complete(m, group, _reported(tickets), pacs=PacsValidation.ENFORCE)
    assert m.masks.all_masks() == []
    _, masks = await _complete(m, group, _reported(tickets), pacs=PacsValidation.WARN)
    assert masks[0].sop_instance_uid is None
