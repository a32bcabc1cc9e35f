"""AnnotationService: proto in, use case, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from pacs.v1 import annotation_pb2, annotation_pb2_grpc

from pacs_grpc.api import convert
from pacs_grpc.api.gate import current_call
from pacs_grpc.domain.errors import Unavailable
from pacs_grpc.domain.review import ReviewStep
from pacs_grpc.services.annotation_history import AnnotationHistory
from pacs_grpc.services.annotations import AnnotationUseCases, ListRequest, NewAnnotation
from pacs_grpc.services.reviews import ReviewUseCases

_ReviewRequest = (
    annotation_pb2.SubmitAnnotationForReviewRequest
    | annotation_pb2.ApproveAnnotationRequest
    | annotation_pb2.RejectAnnotationRequest
)

# The servicer methods read nothing from it: the gate put the call's context in a contextvar.
Context = grpc.aio.ServicerContext[Any, Any]


class AnnotationServicer(annotation_pb2_grpc.AnnotationServiceServicer):
    """AnnotationService: proto in, use case, proto out; no validation or access checks here.

    Only the conversion can refuse: a Struct or Value that has no JSON form is INVALID_ARGUMENT
    naming its field. A WatchAnnotations stream ends with UNAVAILABLE only when the server stops.
    """

    def __init__(
        self,
        use_cases: AnnotationUseCases[Any],
        history: AnnotationHistory[Any],
        reviews: ReviewUseCases[Any],
    ) -> None:
        self._use_cases = use_cases
        self._history = history
        self._reviews = reviews

    async def CreateAnnotation(
        self, request: annotation_pb2.CreateAnnotationRequest, context: Context
    ) -> annotation_pb2.CreateAnnotationResponse:
        given = request.annotation
        new = NewAnnotation(
            project_id=given.project_id,
            study_uid=given.study_uid,
            series_uid=given.series_uid,
            instance_uid=given.instance_uid,
            annotation_type=given.annotation_type,
            annotation_data=convert.json_object(given.annotation_data, "annotation.annotation_data")
            if given.HasField("annotation_data")
            else None,
            measurement_values=convert.json_value(
                given.measurement_values, "annotation.measurement_values"
            )
            if given.HasField("measurement_values")
            else None,
            viewer_software=given.viewer_software,
            request_id=request.request_id,
            annotation_data_encoded=convert.encoded(given, "annotation_data"),
            measurement_values_encoded=convert.encoded(given, "measurement_values"),
        )
        created = await self._use_cases.create(current_call(), new)
        response = annotation_pb2.CreateAnnotationResponse()
        convert.write_annotation(response.annotation, created)
        return response

    async def GetAnnotation(
        self, request: annotation_pb2.GetAnnotationRequest, context: Context
    ) -> annotation_pb2.GetAnnotationResponse:
        found = await self._use_cases.get(current_call(), request.annotation_id, request.revision)
        response = annotation_pb2.GetAnnotationResponse()
        convert.write_annotation(response.annotation, found)
        return response

    async def ListAnnotations(
        self, request: annotation_pb2.ListAnnotationsRequest, context: Context
    ) -> annotation_pb2.ListAnnotationsResponse:
        page = await self._use_cases.list_annotations(
            current_call(),
            ListRequest(
                project_id=request.project_id,
                study_uid=request.study_uid,
                series_uid=request.series_uid,
                instance_uid=request.instance_uid,
                annotation_type=request.annotation_type,
                user_id=request.user_id,
                created_after=convert.optional_time(
                    request.created_after, request.HasField("created_after")
                ),
                created_before=convert.optional_time(
                    request.created_before, request.HasField("created_before")
                ),
                page_size=request.page_size,
                page_token=request.page_token,
                show_deleted=request.show_deleted,
                review_state=convert.review_state_filter(request.review_state),
            ),
        )
        response = annotation_pb2.ListAnnotationsResponse(next_page_token=page.next_page_token)
        for item in page.items:
            convert.write_annotation(response.annotations.add(), item)
        return response

    async def UpdateAnnotation(
        self, request: annotation_pb2.UpdateAnnotationRequest, context: Context
    ) -> annotation_pb2.UpdateAnnotationResponse:
        given = request.annotation
        values = {
            "annotation_type": given.annotation_type,
            "annotation_data": convert.json_object(
                given.annotation_data, "annotation.annotation_data"
            )
            if given.HasField("annotation_data")
            else None,
            "measurement_values": convert.json_value(
                given.measurement_values, "annotation.measurement_values"
            )
            if given.HasField("measurement_values")
            else None,
            "viewer_software": given.viewer_software,
            "annotation_data_encoded": convert.encoded(given, "annotation_data"),
            "measurement_values_encoded": convert.encoded(given, "measurement_values"),
        }
        updated = await self._use_cases.update(
            current_call(),
            request.annotation_id,
            request.etag,
            list(request.update_mask.paths),
            values,
            resource_etag=given.etag,
        )
        response = annotation_pb2.UpdateAnnotationResponse()
        convert.write_annotation(response.annotation, updated)
        return response

    async def DeleteAnnotation(
        self, request: annotation_pb2.DeleteAnnotationRequest, context: Context
    ) -> annotation_pb2.DeleteAnnotationResponse:
        await self._history.delete(
            current_call(), request.annotation_id, request.etag, purge=request.purge
        )
        return annotation_pb2.DeleteAnnotationResponse()

    async def UndeleteAnnotation(
        self, request: annotation_pb2.UndeleteAnnotationRequest, context: Context
    ) -> annotation_pb2.UndeleteAnnotationResponse:
        back = await self._history.undelete(current_call(), request.annotation_id, request.etag)
        response = annotation_pb2.UndeleteAnnotationResponse()
        convert.write_annotation(response.annotation, back)
        return response

    async def ListAnnotationRevisions(
        self, request: annotation_pb2.ListAnnotationRevisionsRequest, context: Context
    ) -> annotation_pb2.ListAnnotationRevisionsResponse:
        page = await self._history.list_revisions(
            current_call(), request.annotation_id, request.page_size, request.page_token
        )
        response = annotation_pb2.ListAnnotationRevisionsResponse(
            next_page_token=page.next_page_token
        )
        for item in page.items:
            convert.write_revision(response.revisions.add(), item)
        return response

    async def RestoreAnnotationRevision(
        self, request: annotation_pb2.RestoreAnnotationRevisionRequest, context: Context
    ) -> annotation_pb2.RestoreAnnotationRevisionResponse:
        restored = await self._history.restore(
            current_call(), request.annotation_id, request.revision, request.etag
        )
        response = annotation_pb2.RestoreAnnotationRevisionResponse()
        convert.write_annotation(response.annotation, restored)
        return response

    async def SubmitAnnotationForReview(
        self, request: annotation_pb2.SubmitAnnotationForReviewRequest, context: Context
    ) -> annotation_pb2.SubmitAnnotationForReviewResponse:
        response = annotation_pb2.SubmitAnnotationForReviewResponse()
        await self._review(response.annotation, request, ReviewStep.SUBMIT)
        return response

    async def ApproveAnnotation(
        self, request: annotation_pb2.ApproveAnnotationRequest, context: Context
    ) -> annotation_pb2.ApproveAnnotationResponse:
        response = annotation_pb2.ApproveAnnotationResponse()
        await self._review(response.annotation, request, ReviewStep.APPROVE)
        return response

    async def RejectAnnotation(
        self, request: annotation_pb2.RejectAnnotationRequest, context: Context
    ) -> annotation_pb2.RejectAnnotationResponse:
        response = annotation_pb2.RejectAnnotationResponse()
        await self._review(response.annotation, request, ReviewStep.REJECT, request.comment)
        return response

    async def _review(
        self, answer: annotation_pb2.Annotation, request: _ReviewRequest, step: ReviewStep,
        comment: str = "",
    ) -> None:  # fmt: skip
        reviewed = await self._reviews.review_annotation(
            current_call(), request.annotation_id, step, request.etag, comment
        )
        convert.write_annotation(answer, reviewed)

    async def WatchAnnotations(
        self, request: annotation_pb2.WatchAnnotationsRequest, context: Context
    ) -> AsyncIterator[annotation_pb2.WatchAnnotationsResponse]:
        subscription = await self._use_cases.watch(
            current_call(), request.project_id, request.study_uid, request.after_event_id
        )
        async with subscription as events:
            async for event in events:
                yield convert.annotation_event(event)
        # A subscription only ends when this server stops; the client resumes
        # elsewhere from the last event id it received.
        raise Unavailable("the server is shutting down; resume with after_event_id")
