"""DeleteMaskGroup's trash on in-memory fakes: delete hides, undelete brings back within the
retention (with its place in the lineage), purge (owners, or the sweeper after the retention) is
the only hard delete, and approved groups are deleted by owners only."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pacs_grpc.domain.errors import FailedPrecondition, NotFound, PermissionDenied
from pacs_grpc.domain.identity import User
from pacs_grpc.domain.masks import MaskGroup
from tests.fakes.mask_builders import MaskWorld, new_group
from tests.fakes.masks import queued_keys

RETENTION = timedelta(days=30)


@pytest.fixture
def m() -> MaskWorld:
    return MaskWorld()


async def _delete(
    m: MaskWorld, group: MaskGroup, *, user: User | None = None, purge: bool = False
) -> int:
    return await m.group_trash(RETENTION).delete(
        m.call("DeleteMaskGroup", user or m.annotator), m.annotation.id, group.id, purge=purge
    )


async def _undelete(m: MaskWorld, group: MaskGroup) -> MaskGroup:
    return await m.group_trash(RETENTION).undelete(
        m.call("UndeleteMaskGroup"), m.annotation.id, group.id
    )


async def test_a_trashed_group_is_gone_to_readers_until_undeleted(m: MaskWorld) -> None:
    group = m.seed_group(1)
    [mask] = m.seed_masks(group, [0])

    assert await _delete(m, group) == 0

    assert queued_keys(m.w.db) == []
    with pytest.raises(NotFound):
        await m.groups().get_group(m.call("GetMaskGroup"), m.annotation.id, group.id)
    listed = await m.groups().list_groups(m.call("ListMaskGroups"), m.annotation.id, 0, "")
    assert listed.items == []
    m.w.clock.advance(RETENTION.total_seconds() - 1)
    back = await _undelete(m, group)
    assert (back.deleted_at, back.is_current, back.complete) == (None, True, True)
    assert m.storage.latest(mask.file_path) is not None


async def test_undelete_is_refused_for_live_groups_and_after_the_retention(m: MaskWorld) -> None:
    group = m.seed_group(1)
    with pytest.raises(FailedPrecondition, match="not in the trash"):
        await _undelete(m, group)
    await _delete(m, group)
    m.w.clock.advance(RETENTION.total_seconds())
    with pytest.raises(FailedPrecondition, match="time in the trash is up"):
        await _undelete(m, group)


async def test_trashing_a_correction_shows_the_previous_version_again(m: MaskWorld) -> None:
    first = m.seed_group(1)
    m.seed_masks(first, [0])
    second = await m.groups().create_group(
        m.call("CreateMaskGroup"), m.annotation.id, new_group(1, supersedes_group_id=first.id), ""
    )
    await m.masks_recorded(second, [0])

    await _delete(m, second)
    current = await m.groups().list_groups(m.call("ListMaskGroups"), m.annotation.id, 0, "")
    assert [g.id for g in current.items] == [first.id]

    await _undelete(m, second)
    current = await m.groups().list_groups(m.call("ListMaskGroups"), m.annotation.id, 0, "")
    assert [g.id for g in current.items] == [second.id]


async def test_approved_groups_are_deleted_and_any_group_purged_by_owners_only(
    m: MaskWorld,
) -> None:
    approved = m.approve(m.seed_group(1))
    m.seed_masks(approved, [0])
    with pytest.raises(FailedPrecondition, match="approved and frozen"):
        await _delete(m, approved)
    with pytest.raises(PermissionDenied, match="purge"):
        await _delete(m, m.seed_group(1), purge=True)

    assert await _delete(m, approved, user=m.admin, purge=True) == 1

    assert approved.id not in m.tables.groups
    assert m.audit[-1].resource_type == "mask_group_purge"


async def test_the_sweeper_purges_groups_past_their_retention(m: MaskWorld) -> None:
    expired, recent = m.seed_group(1), m.seed_group(1)
    [old_mask] = m.seed_masks(expired, [0])
    m.seed_masks(recent, [0])
    await _delete(m, expired)
    m.w.clock.advance(RETENTION.total_seconds() - 1)
    await _delete(m, recent)
    m.w.clock.advance(2)

    result = await m.sweeper(trash_retention=RETENTION).sweep_once()

    assert (result.purged, result.deleted) == (1, 1)
    assert list(m.tables.groups) == [recent.id]
    assert m.storage.latest(old_mask.file_path) is None
