"""MaskService: proto in, use case, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pacs.v1 import mask_pb2, mask_pb2_grpc

from pacs_grpc.api import convert
from pacs_grpc.api.gate import current_call
from pacs_grpc.domain import masks as rules
from pacs_grpc.domain.errors import InvalidArgument
from pacs_grpc.domain.masks import SliceDeclaration, UploadMethod
from pacs_grpc.services.exports import ExportUseCases
from pacs_grpc.services.imports import ImportUseCases, source_from_request
from pacs_grpc.services.masks import MaskUseCases, PushedSlice, PushMessage, PushTarget

Context = Any

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


class MaskServicer(mask_pb2_grpc.MaskServiceServicer):
    def __init__(
        self,
        use_cases: MaskUseCases,
        activity: MaskActivity | None = None,
        *,
        imports: ImportUseCases | None = None,
        exports: ExportUseCases | None = None,
    ) -> None:
        self._exports = exports
        self._use_cases = use_cases
        self._imports = imports
        self._activity: MaskActivity = activity or _NotCounted()

    async def CreateMaskGroup(
        self, request: mask_pb2.CreateMaskGroupRequest, context: Context
    ) -> mask_pb2.CreateMaskGroupResponse:
        given = request.mask_group
        values = rules.group_fields(
            group_name=given.group_name,
            model_name=given.model_name,
            version=given.version,
            modality=given.modality,
            slice_count=given.slice_count,
            mask_type=given.mask_type,
            description=given.description,
            segments=convert.segment_inputs("mask_group.segments", given.segments),
        )
        group = await self._use_cases.create_group(
            current_call(), request.annotation_id, values, request.request_id
        )
        return mask_pb2.CreateMaskGroupResponse(mask_group=convert.mask_group(group))

    async def ListMaskGroups(
        self, request: mask_pb2.ListMaskGroupsRequest, context: Context
    ) -> mask_pb2.ListMaskGroupsResponse:
        page = await self._use_cases.list_groups(
            current_call(), request.annotation_id, request.page_size, request.page_token
        )
        return mask_pb2.ListMaskGroupsResponse(
            mask_groups=[convert.mask_group(g) for g in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetMaskGroup(
        self, request: mask_pb2.GetMaskGroupRequest, context: Context
    ) -> mask_pb2.GetMaskGroupResponse:
        group = await self._use_cases.get_group(
            current_call(), request.annotation_id, request.group_id
        )
        return mask_pb2.GetMaskGroupResponse(mask_group=convert.mask_group(group))

    async def DeleteMaskGroup(
        self, request: mask_pb2.DeleteMaskGroupRequest, context: Context
    ) -> mask_pb2.DeleteMaskGroupResponse:
        await self._use_cases.delete_group(current_call(), request.annotation_id, request.group_id)
        return mask_pb2.DeleteMaskGroupResponse()

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
        tickets = await self._use_cases.create_upload_urls(
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
        completed = rules.completions(
            [(u.upload_id, u.width, u.height, u.md5) for u in request.uploads],
            self._use_cases.limits.max_slices_per_call,
        )
        group, masks = await self._use_cases.complete_upload(
            current_call(), request.annotation_id, request.group_id, completed
        )
        self._activity.slices_completed(len(masks))
        return mask_pb2.CompleteUploadResponse(
            mask_group=convert.mask_group(group), masks=[convert.mask(m) for m in masks]
        )

    async def ListMasks(
        self, request: mask_pb2.ListMasksRequest, context: Context
    ) -> mask_pb2.ListMasksResponse:
        page = await self._use_cases.list_masks(
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
        mask = await self._use_cases.get_mask(
            current_call(), request.annotation_id, request.group_id, request.mask_id
        )
        return mask_pb2.GetMaskResponse(mask=convert.mask(mask))

    async def CreateDownloadUrls(
        self, request: mask_pb2.CreateDownloadUrlsRequest, context: Context
    ) -> mask_pb2.CreateDownloadUrlsResponse:
        page = await self._use_cases.download_urls(
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
        source = source_from_request(
            request.WhichOneof("source"),
            request.pacs.seg_study_uid,
            request.pacs.seg_series_uid,
            request.pacs.seg_instance_uid,
            request.upload_id,
        )
        group = await self._import_cases().import_segmentation(
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
        ticket = await self._import_cases().create_upload(
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

    def _import_cases(self) -> ImportUseCases:
        if self._imports is None:
            raise RuntimeError("MaskServicer was built without its import use cases")
        return self._imports

    async def ExportMaskGroup(
        self, request: mask_pb2.ExportMaskGroupRequest, context: Context
    ) -> mask_pb2.ExportMaskGroupResponse:
        link = await self._export_cases().export(
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
        page, links = await self._export_cases().list_exports(
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

    def _export_cases(self) -> ExportUseCases:
        if self._exports is None:
            # Only servers built without exports (some tests) lack them.
            raise RuntimeError("ExportMaskGroup is not wired on this server")
        return self._exports

    async def PushMasks(
        self, request_iterator: AsyncIterator[mask_pb2.PushMasksRequest], context: Context
    ) -> mask_pb2.PushMasksResponse:
        group, masks, received = await self._use_cases.push(
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
