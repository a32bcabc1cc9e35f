"""Mask group versions on in-memory fakes: a correction is a new version of the lineage, which
becomes current once complete; older versions stay readable; provenance travels with each."""

from __future__ import annotations

from typing import Any

import pytest

from pacs_grpc.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from pacs_grpc.domain.exports import SegmentationBuild
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.domain.masks import MaskGroup
from pacs_grpc.domain.review import ReviewStep
from tests.fakes.mask_builders import MaskWorld, fake_segmentation, new_group


@pytest.fixture
def m() -> MaskWorld:
    return MaskWorld()


async def _create(m: MaskWorld, slice_count: int = 2, **changes: Any) -> MaskGroup:
    return await m.groups().create_group(
        m.call("CreateMaskGroup"), m.annotation.id, new_group(slice_count, **changes), ""
    )


async def _listed(m: MaskWorld, *, all_versions: bool = False) -> list[int]:
    page = await m.groups().list_groups(
        m.call("ListMaskGroups"), m.annotation.id, 0, "", all_versions=all_versions
    )
    return [g.id for g in page.items]


async def test_a_correction_is_pending_until_complete_then_current(m: MaskWorld) -> None:
    first = await _create(m, inference_parameters={"threshold": 0.5}, model_name="seg-net")
    m.seed_masks(first, [0, 1])

    second = await _create(m, supersedes_group_id=first.id, model_name="seg-net")

    assert (second.lineage_id, second.version_number, second.is_current) == (first.id, 2, False)
    assert second.client_id == m.call("CreateMaskGroup").caller.principal.client_id
    assert await _listed(m) == [first.id]
    assert await _listed(m, all_versions=True) == [first.id, second.id]
    m.seed_masks(second, [0])
    await m.masks_recorded(second, [1])
    assert await _listed(m) == [second.id]
    versions = await m.groups().list_versions(
        m.call("ListMaskGroupVersions"), m.annotation.id, first.id
    )
    assert [(g.id, g.version_number, g.is_current) for g in versions] == [
        (second.id, 2, True),
        (first.id, 1, False),
    ]
    old = await m.groups().get_group(m.call("GetMaskGroup"), m.annotation.id, first.id)
    assert (old.complete, old.inference_parameters) == (True, {"threshold": 0.5})


@pytest.mark.parametrize("target", ["pending", "superseded", "elsewhere", "forked"])
async def test_only_the_complete_current_version_is_corrected_once(
    m: MaskWorld, target: str
) -> None:
    first = await _create(m)
    refusal: type[Exception] = FailedPrecondition
    if target == "pending":
        supersedes = first.id
    else:
        m.seed_masks(first, [0, 1])
        second = await _create(m, supersedes_group_id=first.id)
        supersedes = first.id
        if target == "superseded":
            m.seed_masks(second, [0])
            await m.masks_recorded(second, [1])
        elif target == "elsewhere":
            other = m.w.db.seed_annotation(m.project, m.annotator, study_uid="1.2.840.10.1")
            supersedes = m.seed_group(1, annotation=other).id
            refusal = NotFound
        else:
            refusal = AlreadyExists

    with pytest.raises(refusal, match="supersedes_group_id"):
        await _create(m, supersedes_group_id=supersedes)


async def test_purging_the_current_version_reinstates_its_predecessor(m: MaskWorld) -> None:
    first = await _create(m)
    m.seed_masks(first, [0, 1])
    second = await _create(m, supersedes_group_id=first.id)
    m.seed_masks(second, [0])
    await m.masks_recorded(second, [1])

    await m.group_trash().delete(
        m.call("DeleteMaskGroup", m.admin), m.annotation.id, second.id, purge=True
    )

    assert await _listed(m) == [first.id]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"inference_parameters": {"x": "y" * 9000}}, "mask_group.inference_parameters"),
        (
            {"inference_parameters": {"deep": [[[[[[[[[[1]]]]]]]]]]}},
            "mask_group.inference_parameters",
        ),
        ({"input_series_uid": "1.2.x"}, "mask_group.input_series_uid"),
        ({"supersedes_group_id": -1}, "mask_group.supersedes_group_id"),
    ],
)
async def test_bad_provenance_names_its_field(
    m: MaskWorld, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument, match=field):
        await _create(m, **changes)
    assert m.tables.groups == {}


async def test_whoever_recorded_a_slice_may_not_approve_the_group(m: MaskWorld) -> None:
    owner = m.w.db.seed_user("olga")
    m.w.db.seed_member(m.project, owner, ProjectRole.OWNER)
    group = await _create(m)
    m.seed_masks(group, [0])
    await m.masks_recorded(group, [1], by=owner)
    await m.reviews().review_group(
        m.call("SubmitMaskGroupForReview"), m.annotation.id, group.id, ReviewStep.SUBMIT
    )
    with pytest.raises(PermissionDenied, match="own work"):
        await m.reviews().review_group(
            m.call("ApproveMaskGroup", owner), m.annotation.id, group.id, ReviewStep.APPROVE
        )


async def test_an_export_of_version_2_is_built_from_its_own_slices_and_parameters(
    m: MaskWorld,
) -> None:
    series = m.pacs.add_series(m.annotation.study_uid, m.annotation.series_uid or "", images=1)
    uid = series.instances[0].sop_instance_uid
    first = await _create(m, slice_count=1, model_name="seg-net")
    m.seed_masks(first, [0], sop_uids=[uid])
    second = m.approve(
        await _create(
            m, slice_count=1, model_name="seg-net", supersedes_group_id=first.id,
            inference_parameters={"threshold": 0.7, "checkpoint": "epoch-40"},
        )
    )  # fmt: skip
    [stored] = m.seed_masks(second, [0], sop_uids=[uid])
    builds: list[SegmentationBuild] = []

    def capture(build: SegmentationBuild) -> bytes:
        builds.append(build)
        return fake_segmentation(build)

    await m.export_use_cases(write=capture).export(
        m.call("ExportMaskGroup"), m.annotation.id, second.id, store_in_pacs=False, request_id=""
    )

    [build] = builds
    latest = m.storage.latest(stored.file_path)
    assert latest is not None
    assert [s.png for s in build.slices] == [latest.data]
    assert build.inference_parameters == {"threshold": 0.7, "checkpoint": "epoch-40"}


async def test_the_retry_of_a_correction_that_went_through_gets_its_version_back(
    m: MaskWorld,
) -> None:
    first = await _create(m)
    m.seed_masks(first, [0, 1])
    correction = new_group(2, supersedes_group_id=first.id)

    async def create() -> MaskGroup:
        return await m.groups().create_group(
            m.call("CreateMaskGroup", request_id="rpc-retry"), m.annotation.id, correction, "k1"
        )

    second = await create()
    m.seed_masks(second, [0])
    await m.masks_recorded(second, [1])  # now current: `first` no longer is

    assert (await create()).id == second.id
