"""MaskService: proto in, use case, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from pacs.v1 import mask_pb2, mask_pb2_grpc

from pacs_grpc.api import convert
from pacs_grpc.api.gate import current_call
from pacs_grpc.domain.errors import InvalidArgument
from pacs_grpc.domain.masks import SliceDeclaration, UploadMethod
from pacs_grpc.domain.review import ReviewStep
from pacs_grpc.services.exports import ExportUseCases
from pacs_grpc.services.imports import ImportUseCases, SourceRequest
from pacs_grpc.services.mask_completion import UploadCompletion
from pacs_grpc.services.mask_group_trash import MaskGroupTrash
from pacs_grpc.services.mask_groups import MaskGroupUseCases, NewGroup
from pacs_grpc.services.mask_push import MaskPush, PushedSlice, PushMessage, PushTarget
from pacs_grpc.services.mask_urls import MaskUrlUseCases
from pacs_grpc.services.reviews import ReviewUseCases

# The servicer methods read nothing from it: the gate put the call's context in a contextvar.
Context = grpc.aio.ServicerContext[Any, Any]

_METHODS = {
    mask_pb2.UPLOAD_METHOD_UNSPECIFIED: UploadMethod.POST,
    mask_pb2.UPLOAD_METHOD_POST: UploadMethod.POST,
    mask_pb2.UPLOAD_METHOD_PUT: UploadMethod.PUT,
}
_PROTO_METHODS = {UploadMethod.POST: mask_pb2.UPLOAD_METHOD_POST,
                  UploadMethod.PUT: mask_pb2.UPLOAD_METHOD_PUT}  # fmt: skip


class MaskActivity(Protocol):
    """Where the servicer counts what it hands out and records (pacs_grpc.api.metrics)."""

    def tickets_issued(self, count: int) -> None: ...

    def slices_completed(self, count: int) -> None: ...

    def masks_pushed(self, count: int, received_bytes: int) -> None: ...


class _NotCounted:
    def tickets_issued(self, count: int) -> None:
        pass

    def slices_completed(self, count: int) -> None:
        pass

    def masks_pushed(self, count: int, received_bytes: int) -> None:
        pass


@dataclass(frozen=True)
class MaskUseCaseSet:
    """Every use case MaskService delegates to."""

    groups: MaskGroupUseCases[Any]
    urls: MaskUrlUseCases[Any]
    completion: UploadCompletion[Any]
    push: MaskPush[Any]
    imports: ImportUseCases[Any]
    exports: ExportUseCases[Any]
    reviews: ReviewUseCases[Any]
    trash: MaskGroupTrash[Any]


class MaskServicer(mask_pb2_grpc.MaskServiceServicer):
    """MaskService: proto in, use case, proto out; no validation or access checks here.

    Only the translation can refuse: an unknown segment algorithm type, or a PushMasks message
    that is no target, slice or chunk, is INVALID_ARGUMENT. `activity` counts what was issued.
    """

    def __init__(self, use_cases: MaskUseCaseSet, activity: MaskActivity | None = None) -> None:
        self._groups = use_cases.groups
        self._urls = use_cases.urls
        self._completion = use_cases.completion
        self._push = use_cases.push
        self._imports = use_cases.imports
        self._exports = use_cases.exports
        self._reviews = use_cases.reviews
        self._trash = use_cases.trash
        self._activity: MaskActivity = activity or _NotCounted()

    async def CreateMaskGroup(
        self, request: mask_pb2.CreateMaskGroupRequest, context: Context
    ) -> mask_pb2.CreateMaskGroupResponse:
        given = request.mask_group
        new = NewGroup(
            group_name=given.group_name,
            model_name=given.model_name,
            version=given.version,
            modality=given.modality,
            slice_count=given.slice_count,
            mask_type=given.mask_type,
            description=given.description,
            segments=convert.segment_inputs("mask_group.segments", given.segments),
            supersedes_group_id=given.supersedes_group_id,
            inference_parameters=convert.json_object(
                given.inference_parameters, "mask_group.inference_parameters"
            )
            if given.HasField("inference_parameters")
            else None,
            input_series_uid=given.input_series_uid,
        )
        group = await self._groups.create_group(
            current_call(), request.annotation_id, new, request.request_id
        )
        return mask_pb2.CreateMaskGroupResponse(mask_group=convert.mask_group(group))

    async def ListMaskGroups(
        self, request: mask_pb2.ListMaskGroupsRequest, context: Context
    ) -> mask_pb2.ListMaskGroupsResponse:
        page = await self._groups.list_groups(
            current_call(), request.annotation_id, request.page_size, request.page_token,
            convert.review_state_filter(request.review_state),
            all_versions=request.all_versions,
        )  # fmt: skip
        return mask_pb2.ListMaskGroupsResponse(
            mask_groups=[convert.mask_group(g) for g in page.items],
            next_page_token=page.next_page_token,
        )

    async def ListMaskGroupVersions(
        self, request: mask_pb2.ListMaskGroupVersionsRequest, context: Context
    ) -> mask_pb2.ListMaskGroupVersionsResponse:
        versions = await self._groups.list_versions(
            current_call(), request.annotation_id, request.group_id
        )
        return mask_pb2.ListMaskGroupVersionsResponse(
            mask_groups=[convert.mask_group(g) for g in versions]
        )

    async def GetMaskGroup(
        self, request: mask_pb2.GetMaskGroupRequest, context: Context
    ) -> mask_pb2.GetMaskGroupResponse:
        group = await self._groups.get_group(
            current_call(), request.annotation_id, request.group_id
        )
        return mask_pb2.GetMaskGroupResponse(mask_group=convert.mask_group(group))

    async def SubmitMaskGroupForReview(
        self, request: mask_pb2.SubmitMaskGroupForReviewRequest, context: Context
    ) -> mask_pb2.SubmitMaskGroupForReviewResponse:
        group = await self._reviews.review_group(
            current_call(), request.annotation_id, request.group_id, ReviewStep.SUBMIT
        )
        return mask_pb2.SubmitMaskGroupForReviewResponse(mask_group=convert.mask_group(group))

    async def ApproveMaskGroup(
        self, request: mask_pb2.ApproveMaskGroupRequest, context: Context
    ) -> mask_pb2.ApproveMaskGroupResponse:
        group = await self._reviews.review_group(
            current_call(), request.annotation_id, request.group_id, ReviewStep.APPROVE
        )
        return mask_pb2.ApproveMaskGroupResponse(mask_group=convert.mask_group(group))

    async def RejectMaskGroup(
        self, request: mask_pb2.RejectMaskGroupRequest, context: Context
    ) -> mask_pb2.RejectMaskGroupResponse:
        group = await self._reviews.review_group(
            current_call(), request.annotation_id, request.group_id, ReviewStep.REJECT,
            request.comment,
        )  # fmt: skip
        return mask_pb2.RejectMaskGroupResponse(mask_group=convert.mask_group(group))

    async def DeleteMaskGroup(
        self, request: mask_pb2.DeleteMaskGroupRequest, context: Context
    ) -> mask_pb2.DeleteMaskGroupResponse:
        await self._trash.delete(
            current_call(), request.annotation_id, request.group_id, purge=request.purge
        )
        return mask_pb2.DeleteMaskGroupResponse()

    async def UndeleteMaskGroup(
        self, request: mask_pb2.UndeleteMaskGroupRequest, context: Context
    ) -> mask_pb2.UndeleteMaskGroupResponse:
        group = await self._trash.undelete(current_call(), request.annotation_id, request.group_id)
        return mask_pb2.UndeleteMaskGroupResponse(mask_group=convert.mask_group(group))

    async def CreateUploadUrls(
        self, request: mask_pb2.CreateUploadUrlsRequest, context: Context
    ) -> mask_pb2.CreateUploadUrlsResponse:
        declared = [
            SliceDeclaration(
                slice_index=s.slice_index,
                sop_instance_uid=s.sop_instance_uid,
                label_name=s.label_name,
                content_type=s.content_type,
                size_bytes=s.size_bytes,
                md5=s.md5,
            )
            for s in request.slices
        ]
        tickets = await self._urls.create_upload_urls(
            current_call(),
            request.annotation_id,
            request.group_id,
            declared,
            ttl_seconds=request.ttl_seconds,
            method=_METHODS.get(request.method, UploadMethod.POST),
        )
        self._activity.tickets_issued(len(tickets))
        return mask_pb2.CreateUploadUrlsResponse(
            tickets=[
                mask_pb2.UploadTicket(
                    upload_id=str(t.upload_id),
                    slice_index=t.slice_index,
                    method=_PROTO_METHODS[t.method],
                    url=t.url,
                    fields=t.fields,
                    headers=t.headers,
                    object_key=t.object_key,
                    expires_at=convert.timestamp(t.expires_at),
                )
                for t in tickets
            ]
        )

    async def CompleteUpload(
        self, request: mask_pb2.CompleteUploadRequest, context: Context
    ) -> mask_pb2.CompleteUploadResponse:
        group, masks = await self._completion.complete_upload(
            current_call(),
            request.annotation_id,
            request.group_id,
            [(u.upload_id, u.width, u.height, u.md5) for u in request.uploads],
        )
        self._activity.slices_completed(len(masks))
        return mask_pb2.CompleteUploadResponse(
            mask_group=convert.mask_group(group), masks=[convert.mask(m) for m in masks]
        )

    async def ListMasks(
        self, request: mask_pb2.ListMasksRequest, context: Context
    ) -> mask_pb2.ListMasksResponse:
        page = await self._groups.list_masks(
            current_call(),
            request.annotation_id,
            request.group_id,
            request.page_size,
            request.page_token,
        )
        return mask_pb2.ListMasksResponse(
            masks=[convert.mask(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def GetMask(
        self, request: mask_pb2.GetMaskRequest, context: Context
    ) -> mask_pb2.GetMaskResponse:
        mask = await self._groups.get_mask(
            current_call(), request.annotation_id, request.group_id, request.mask_id
        )
        return mask_pb2.GetMaskResponse(mask=convert.mask(mask))

    async def CreateDownloadUrls(
        self, request: mask_pb2.CreateDownloadUrlsRequest, context: Context
    ) -> mask_pb2.CreateDownloadUrlsResponse:
        page = await self._urls.download_urls(
            current_call(),
            request.annotation_id,
            request.group_id,
            list(request.mask_ids),
            request.ttl_seconds,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return mask_pb2.CreateDownloadUrlsResponse(
            urls=[
                mask_pb2.DownloadUrl(
                    mask_id=link.mask.id,
                    slice_index=link.mask.slice_index,
                    url=link.url,
                    mime_type=link.mask.mime_type,
                    expires_at=convert.timestamp(link.expires_at),
                )
                for link in page.items
            ],
            next_page_token=page.next_page_token,
        )

    async def ImportSegmentation(
        self, request: mask_pb2.ImportSegmentationRequest, context: Context
    ) -> mask_pb2.ImportSegmentationResponse:
        source = SourceRequest(
            request.WhichOneof("source"),
            seg_study_uid=request.pacs.seg_study_uid,
            seg_series_uid=request.pacs.seg_series_uid,
            seg_instance_uid=request.pacs.seg_instance_uid,
            upload_id=request.upload_id,
        )
        group = await self._imports.import_segmentation(
            current_call(),
            request.annotation_id,
            source,
            group_name=request.group_name,
            description=request.description,
            request_id=request.request_id,
        )
        return mask_pb2.ImportSegmentationResponse(mask_group=convert.mask_group(group))

    async def CreateSegmentationUpload(
        self, request: mask_pb2.CreateSegmentationUploadRequest, context: Context
    ) -> mask_pb2.CreateSegmentationUploadResponse:
        ticket = await self._imports.create_upload(
            current_call(), request.annotation_id, request.size_bytes, request.ttl_seconds
        )
        self._activity.tickets_issued(1)
        return mask_pb2.CreateSegmentationUploadResponse(
            ticket=mask_pb2.UploadTicket(
                upload_id=str(ticket.upload_id),
                method=mask_pb2.UPLOAD_METHOD_POST,
                url=ticket.url,
                fields=ticket.fields,
                object_key=ticket.object_key,
                expires_at=convert.timestamp(ticket.expires_at),
            )
        )

    async def ExportMaskGroup(
        self, request: mask_pb2.ExportMaskGroupRequest, context: Context
    ) -> mask_pb2.ExportMaskGroupResponse:
        link = await self._exports.export(
            current_call(),
            request.annotation_id,
            request.group_id,
            store_in_pacs=request.store_in_pacs,
            request_id=request.request_id,
            ttl_seconds=request.ttl_seconds,
        )
        return mask_pb2.ExportMaskGroupResponse(
            mask_group_export=convert.mask_group_export(link.export),
            download_url=link.url,
            download_expires_at=convert.timestamp(link.expires_at),
        )

    async def ListMaskGroupExports(
        self, request: mask_pb2.ListMaskGroupExportsRequest, context: Context
    ) -> mask_pb2.ListMaskGroupExportsResponse:
        page, links = await self._exports.list_exports(
            current_call(),
            request.annotation_id,
            request.group_id,
            request.page_size,
            request.page_token,
        )
        return mask_pb2.ListMaskGroupExportsResponse(
            mask_group_exports=[convert.mask_group_export(e) for e in page.items],
            next_page_token=page.next_page_token,
            download_urls=[
                mask_pb2.ExportDownloadUrl(
                    export_id=link.export.id,
                    url=link.url,
                    expires_at=convert.timestamp(link.expires_at),
                )
                for link in links
            ],
        )

    async def PushMasks(
        self, request_iterator: AsyncIterator[mask_pb2.PushMasksRequest], context: Context
    ) -> mask_pb2.PushMasksResponse:
        group, masks, received = await self._push.push(
            current_call(), _push_messages(request_iterator)
        )
        self._activity.masks_pushed(len(masks), received)
        return mask_pb2.PushMasksResponse(
            mask_group=convert.mask_group(group),
            masks=[convert.mask(m) for m in masks],
            bytes_received=received,
        )


async def _push_messages(
    requests: AsyncIterator[mask_pb2.PushMasksRequest],
) -> AsyncIterator[PushMessage]:
    async for request in requests:
        kind = request.WhichOneof("message")
        if kind == "target":
            yield PushTarget(request.target.annotation_id, request.target.group_id)
        elif kind == "slice":
            header = request.slice
            yield PushedSlice(
                SliceDeclaration(
                    slice_index=header.slice_index,
                    sop_instance_uid=header.sop_instance_uid,
                    label_name=header.label_name,
                    content_type=header.content_type,
                    size_bytes=header.size_bytes,
                    md5=header.md5,
                ),
                header.width,
                header.height,
            )
        elif kind == "chunk":
            yield request.chunk
        else:
            raise InvalidArgument("message", "must be a target, a slice header or a chunk")
