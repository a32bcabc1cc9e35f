"""Mask group versions on the real stack: the lineage, the current version promoted by the
database when a version completes, provenance with the token's azp, and forks refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from grpc import aio
from pacs.v1 import mask_pb2, mask_pb2_grpc

from pacs_devstack.stack import LocalStack
from tests.support.masks import one_slice_push
from tests.support.projects import ANNOTATOR, VIEWER, create_annotation, new_team
from tests.support.users import ApiUser, unique_name

if TYPE_CHECKING:
    from pacs.v1.mask_pb2_grpc import MaskServiceAsyncStub as Masks

STUDY = "1.2.840.113619.2.55.3.604688119.969.1268071029.324"
SERIES = STUDY + ".1"


class Team:
    def __init__(self, project_id: int, annotator: ApiUser, viewer: ApiUser) -> None:
        self.project_id = project_id
        self.annotator = annotator
        self.viewer = viewer


@pytest.fixture(scope="module")
def masks(channel: aio.Channel) -> Masks:
    return mask_pb2_grpc.MaskServiceStub(channel)


@pytest.fixture(scope="module")
async def team(live_stack: LocalStack, channel: aio.Channel) -> Team:
    assert live_stack.issuer is not None
    roles = {"annotator": ANNOTATOR, "viewer": VIEWER}
    ct = await new_team(channel, live_stack.issuer, unique_name("versions"), roles)
    return Team(ct.project_id, ct["annotator"], ct["viewer"])


async def _group(
    masks: Masks, team: Team, annotation_id: int, supersedes: int = 0, **provenance: object
) -> mask_pb2.MaskGroup:
    given = mask_pb2.MaskGroup(slice_count=1, model_name="seg-net", supersedes_group_id=supersedes)
    if "parameters" in provenance:
        given.inference_parameters.update(provenance["parameters"])  # type: ignore[arg-type]
    given.input_series_uid = str(provenance.get("series", ""))
    reply = await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(annotation_id=annotation_id, mask_group=given),
        metadata=team.annotator.metadata(),
    )
    return reply.mask_group


async def _complete(masks: Masks, team: Team, annotation_id: int, group_id: int) -> None:
    await masks.PushMasks(
        one_slice_push(annotation_id, group_id), metadata=team.annotator.metadata()
    )


async def _listed(
    masks: Masks, team: Team, annotation_id: int, *, all_versions: bool = False
) -> list[int]:
    reply = await masks.ListMaskGroups(
        mask_pb2.ListMaskGroupsRequest(annotation_id=annotation_id, all_versions=all_versions),
        metadata=team.viewer.metadata(),
    )
    return [g.id for g in reply.mask_groups]


async def test_a_version_becomes_current_when_complete_and_the_old_one_stays(
    channel: aio.Channel, masks: Masks, team: Team
) -> None:
    annotation_id = await create_annotation(
        channel, team.annotator, team.project_id, STUDY, {"label": "liver"}, series_uid=SERIES
    )
    first = await _group(masks, team, annotation_id, parameters={"threshold": 0.5})
    assert (first.lineage_id, first.version_number, first.current) == (first.id, 1, True)
    assert first.client_id  # the dev issuer's azp
    await _complete(masks, team, annotation_id, first.id)

    second = await _group(
        masks, team, annotation_id, first.id, parameters={"threshold": 0.7}, series=SERIES
    )

    assert (second.lineage_id, second.version_number, second.current) == (first.id, 2, False)
    assert second.supersedes_group_id == first.id
    assert (second.input_series_uid, second.inference_parameters["threshold"]) == (SERIES, 0.7)
    assert await _listed(masks, team, annotation_id) == [first.id]
    assert await _listed(masks, team, annotation_id, all_versions=True) == [first.id, second.id]

    await _complete(masks, team, annotation_id, second.id)

    assert await _listed(masks, team, annotation_id) == [second.id]
    lineage = await masks.ListMaskGroupVersions(
        mask_pb2.ListMaskGroupVersionsRequest(annotation_id=annotation_id, group_id=first.id),
        metadata=team.viewer.metadata(),
    )
    assert [(g.id, g.version_number, g.current) for g in lineage.mask_groups] == [
        (second.id, 2, True),
        (first.id, 1, False),
    ]
    old = await masks.CreateDownloadUrls(
        mask_pb2.CreateDownloadUrlsRequest(annotation_id=annotation_id, group_id=first.id),
        metadata=team.viewer.metadata(),
    )
    assert len(old.urls) == 1

    await masks.DeleteMaskGroup(
        mask_pb2.DeleteMaskGroupRequest(annotation_id=annotation_id, group_id=second.id),
        metadata=team.annotator.metadata(),
    )
    assert await _listed(masks, team, annotation_id) == [first.id]


async def test_a_version_is_corrected_once_and_only_when_complete_and_current(
    channel: aio.Channel, masks: Masks, team: Team
) -> None:
    annotation_id = await create_annotation(
        channel, team.annotator, team.project_id, STUDY, {"label": "spleen"}
    )
    first = await _group(masks, team, annotation_id)

    async def refused(supersedes: int) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(aio.AioRpcError) as error:
            await _group(masks, team, annotation_id, supersedes)
        return error.value.code(), error.value.details() or ""

    code, message = await refused(first.id)
    assert (code, message.startswith("mask_group.supersedes_group_id:")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        True,
    )
    await _complete(masks, team, annotation_id, first.id)
    await _group(masks, team, annotation_id, first.id)
    code, message = await refused(first.id)
    assert (code, "already has a successor" in message) == (grpc.StatusCode.ALREADY_EXISTS, True)
    code, _ = await refused(first.id + 10_000_000)
    assert code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as too_large:
        await _group(masks, team, annotation_id, parameters={"x": "y" * 9000})
    assert too_large.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (too_large.value.details() or "").startswith("mask_group.inference_parameters:")
