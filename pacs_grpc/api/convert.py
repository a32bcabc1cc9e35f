"""Between domain objects and protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, review_pb2

from pacs_grpc.domain.annotation import (
    Annotation,
    AnnotationEvent,
    AnnotationRevision,
    EventType,
    RevisionAction,
)
from pacs_grpc.domain.errors import InvalidArgument
from pacs_grpc.domain.exports import MaskGroupExport, PacsStatus
from pacs_grpc.domain.identity import Project, ProjectMember, User
from pacs_grpc.domain.masks import Mask, MaskGroup
from pacs_grpc.domain.review import Review, ReviewState
from pacs_grpc.domain.segments import AlgorithmType, CodedConcept, Segment, SegmentInput

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> Timestamp:
    message = Timestamp()
    write_time(message, value)
    return message


def write_time(message: Timestamp, value: datetime) -> None:
    """Timestamp.FromDatetime, in integers: it costs a third, and a page holds a hundred."""
    if value.tzinfo is None:
        # What FromDatetime assumes of a naive value; PostgreSQL's timestamptz never is.
        value = value.replace(tzinfo=UTC)
    since = value - _EPOCH
    message.seconds = since.days * 86_400 + since.seconds
    message.nanos = since.microseconds * 1000


def user(value: User) -> identity_pb2.User:
    return identity_pb2.User(
        id=value.id,
        keycloak_id=value.keycloak_id,
        username=value.username,
        email=value.email or "",
        full_name=value.full_name or "",
        organization=value.organization or "",
        department=value.department or "",
        phone=value.phone or "",
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
    )


def project(value: Project) -> identity_pb2.Project:
    return identity_pb2.Project(
        id=value.id,
        name=value.name,
        description=value.description or "",
        is_active=value.is_active,
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
        export_unapproved=value.export_unapproved,
    )


def member(value: ProjectMember) -> identity_pb2.ProjectMember:
    return identity_pb2.ProjectMember(
        project_id=value.project_id,
        user_id=value.user_id,
        username=value.username,
        role=identity_pb2.ProjectRole.ValueType(value.role.value),
        created_at=timestamp(value.created_at),
    )


def write_annotation(message: annotation_pb2.Annotation, value: Annotation) -> None:
    """`value` written into `message` where it stands, such as an element just added to a
    reply's repeated field: a message built apart would be copied in whole, which costs as
    much again as building it."""
    message.id = value.id
    message.project_id = value.project_id
    message.user_id = value.user_id
    message.study_uid = value.study_uid
    message.series_uid = value.series_uid or ""
    message.instance_uid = value.instance_uid or ""
    message.annotation_type = value.annotation_type
    message.viewer_software = value.viewer_software or ""
    message.etag = value.etag
    message.revision = value.row_version
    write_time(message.created_at, value.created_at)
    write_time(message.updated_at, value.updated_at)
    if value.deleted_at is not None:
        write_time(message.deleted_at, value.deleted_at)
    # Written in place, as the rest: this runs for every row of a list page.
    reviewed = message.review
    reviewed.state = _REVIEW_STATES[value.review_state]
    if value.reviewed_by is not None:
        reviewed.user_id = value.reviewed_by
    if value.reviewed_at is not None:
        write_time(reviewed.changed_at, value.reviewed_at)
    if value.review_comment:
        reviewed.comment = value.review_comment
    # The bytes kept from the write parse in C; building the Struct from JSON costs about
    # 0.2 ms per KiB in Python (migration 0010).
    if value.annotation_data_encoded is not None:
        message.annotation_data.MergeFromString(value.annotation_data_encoded)
    elif value.annotation_data is not None:
        message.annotation_data.update(value.annotation_data)
    if value.measurement_values_encoded is not None:
        message.measurement_values.MergeFromString(value.measurement_values_encoded)
    elif value.measurement_values is not None:
        json_format.ParseDict(value.measurement_values, message.measurement_values)


def encoded(
    given: annotation_pb2.Annotation, name: Literal["annotation_data", "measurement_values"]
) -> bytes | None:
    """A JSON field of the request, to be kept and answered with (see write_annotation); None
    when the field is absent.

    Fields unknown to Struct and Value are dropped first: the JSON checks never see them, so
    kept they would let a client attach megabytes that every reader of the annotation gets.
    """
    if not given.HasField(name):
        return None
    field: Struct | Value = getattr(given, name)
    field.DiscardUnknownFields()
    return field.SerializeToString()


_EVENT_TYPES = {
    EventType.CREATED: annotation_pb2.ANNOTATION_EVENT_TYPE_CREATED,
    EventType.UPDATED: annotation_pb2.ANNOTATION_EVENT_TYPE_UPDATED,
    EventType.DELETED: annotation_pb2.ANNOTATION_EVENT_TYPE_DELETED,
    EventType.RESTORED: annotation_pb2.ANNOTATION_EVENT_TYPE_RESTORED,
    EventType.MASK_GROUP_REVIEWED: annotation_pb2.ANNOTATION_EVENT_TYPE_MASK_GROUP_REVIEWED,
}


def annotation_event(value: AnnotationEvent) -> annotation_pb2.WatchAnnotationsResponse:
    message = annotation_pb2.WatchAnnotationsResponse(
        event_id=value.event_id,
        event_type=_EVENT_TYPES[value.event_type],
        annotation_id=value.annotation_id,
        occurred_at=timestamp(value.occurred_at),
    )
    if value.annotation is not None and value.event_type is not EventType.DELETED:
        write_annotation(message.annotation, value.annotation)
    else:
        message.annotation.id = value.annotation_id
        message.annotation.project_id = value.project_id
        message.annotation.study_uid = value.study_uid
    if value.mask_group_id is not None:
        message.mask_group_id = value.mask_group_id
        if value.mask_group_review is not None:
            message.mask_group_review.CopyFrom(review(value.mask_group_review))
    return message


_REVISION_ACTIONS = {
    RevisionAction.CREATED: annotation_pb2.ANNOTATION_REVISION_ACTION_CREATED,
    RevisionAction.UPDATED: annotation_pb2.ANNOTATION_REVISION_ACTION_UPDATED,
    RevisionAction.RESTORED: annotation_pb2.ANNOTATION_REVISION_ACTION_RESTORED,
    RevisionAction.DELETED: annotation_pb2.ANNOTATION_REVISION_ACTION_DELETED,
    RevisionAction.UNDELETED: annotation_pb2.ANNOTATION_REVISION_ACTION_UNDELETED,
    RevisionAction.SUBMITTED: annotation_pb2.ANNOTATION_REVISION_ACTION_SUBMITTED,
    RevisionAction.APPROVED: annotation_pb2.ANNOTATION_REVISION_ACTION_APPROVED,
    RevisionAction.REJECTED: annotation_pb2.ANNOTATION_REVISION_ACTION_REJECTED,
}


def write_revision(message: annotation_pb2.AnnotationRevision, value: AnnotationRevision) -> None:
    message.revision = value.revision
    message.action = _REVISION_ACTIONS[value.action]
    message.changed_fields.extend(value.changed_fields)
    message.user_id = value.user_id or 0
    message.restored_from_revision = value.restored_from or 0
    message.review_state = _REVIEW_STATES[value.review_state]
    write_time(message.created_at, value.created_at)


def json_object(message: Struct, field: str) -> dict[str, Any]:
    return _json(message, field)  # type: ignore[no-any-return]


def json_value(message: Value, field: str) -> Any:
    return _json(message, field)


def _json(message: Struct | Value, field: str) -> Any:
    # protobuf refuses to turn NaN and Infinity into JSON (they have no JSON form); an
    # empty Value (no kind set) is refused the same way. Both are the client's to fix.
    try:
        return json_format.MessageToDict(message)
    except (ValueError, json_format.SerializeToJsonError):
        raise InvalidArgument(
            field, "must be JSON: no NaN, no Infinity, and every value set"
        ) from None


def optional_time(message: Timestamp, present: bool) -> datetime | None:
    return message.ToDatetime(tzinfo=UTC) if present else None


def mask_group(value: MaskGroup) -> mask_pb2.MaskGroup:
    message = mask_pb2.MaskGroup(
        id=value.id,
        annotation_id=value.annotation_id,
        group_name=value.group_name or "",
        model_name=value.model_name or "",
        version=value.version or "",
        modality=value.modality or "",
        slice_count=value.slice_count,
        mask_type=value.mask_type,
        description=value.description or "",
        created_by=value.created_by or 0,
        status=mask_pb2.MASK_GROUP_STATUS_COMPLETE
        if value.complete
        else mask_pb2.MASK_GROUP_STATUS_PENDING,
        completed_slices=value.completed_slices,
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
        segments=[segment(s) for s in value.segments],
        review=review(value.review),
        supersedes_group_id=value.supersedes_group_id or 0,
        lineage_id=value.lineage_id,
        version_number=value.version_number,
        current=value.is_current,
        input_series_uid=value.input_series_uid or "",
        client_id=value.client_id or "",
    )
    if value.inference_parameters is not None:
        message.inference_parameters.update(value.inference_parameters)
    return message


_REVIEW_STATES = {
    ReviewState.DRAFT: review_pb2.REVIEW_STATE_DRAFT,
    ReviewState.SUBMITTED: review_pb2.REVIEW_STATE_SUBMITTED,
    ReviewState.APPROVED: review_pb2.REVIEW_STATE_APPROVED,
    ReviewState.REJECTED: review_pb2.REVIEW_STATE_REJECTED,
}
_REVIEW_STATE_VALUES = {wire: domain for domain, wire in _REVIEW_STATES.items()}


def review(value: Review) -> review_pb2.Review:
    message = review_pb2.Review(
        state=_REVIEW_STATES[value.state],
        user_id=value.user_id or 0,
        comment=value.comment or "",
    )
    if value.changed_at is not None:
        write_time(message.changed_at, value.changed_at)
    return message


def review_state_filter(value: review_pb2.ReviewState.ValueType) -> ReviewState | None:
    """A list filter's state; UNSPECIFIED (0) is no filter. An unknown number names its field."""
    if value == review_pb2.REVIEW_STATE_UNSPECIFIED:
        return None
    try:
        return _REVIEW_STATE_VALUES[value]
    except KeyError:
        raise InvalidArgument("review_state", "is not a review state") from None


_ALGORITHM_TYPES = {
    mask_pb2.SEGMENT_ALGORITHM_TYPE_AUTOMATIC: AlgorithmType.AUTOMATIC,
    mask_pb2.SEGMENT_ALGORITHM_TYPE_SEMIAUTOMATIC: AlgorithmType.SEMIAUTOMATIC,
    mask_pb2.SEGMENT_ALGORITHM_TYPE_MANUAL: AlgorithmType.MANUAL,
}
_ALGORITHM_TYPE_VALUES = {domain: wire for wire, domain in _ALGORITHM_TYPES.items()}


def segment(value: Segment) -> mask_pb2.Segment:
    return mask_pb2.Segment(
        pixel_value=value.pixel_value,
        label=value.label,
        segmented_property_category=_concept(value.segmented_property_category),
        segmented_property_type=_concept(value.segmented_property_type),
        display_color=mask_pb2.RgbColor(
            red=value.display_color[0], green=value.display_color[1], blue=value.display_color[2]
        )
        if value.display_color
        else None,
        algorithm_type=_ALGORITHM_TYPE_VALUES[value.algorithm_type],
        description=value.description or "",
    )


def segment_inputs(field: str, values: Sequence[mask_pb2.Segment]) -> list[SegmentInput]:
    """Segments as declared; the domain validates them (pacs_grpc.domain.segments)."""
    result = []
    for position, given in enumerate(values):
        algorithm: AlgorithmType | None = None
        if given.algorithm_type != mask_pb2.SEGMENT_ALGORITHM_TYPE_UNSPECIFIED:
            algorithm = _ALGORITHM_TYPES.get(given.algorithm_type)
            if algorithm is None:
                raise InvalidArgument(
                    f"{field}[{position}].algorithm_type", "is not a known algorithm type"
                )
        color = given.display_color
        result.append(
            SegmentInput(
                pixel_value=given.pixel_value,
                label=given.label,
                segmented_property_category=_concept_input(given, "segmented_property_category"),
                segmented_property_type=_concept_input(given, "segmented_property_type"),
                algorithm_type=algorithm,
                display_color=(color.red, color.green, color.blue)
                if given.HasField("display_color")
                else None,
                description=given.description,
            )
        )
    return result


def _concept(value: CodedConcept) -> mask_pb2.CodedConcept:
    return mask_pb2.CodedConcept(
        code_value=value.code_value,
        coding_scheme_designator=value.coding_scheme_designator,
        code_meaning=value.code_meaning,
    )


def _concept_input(
    given: mask_pb2.Segment,
    name: Literal["segmented_property_category", "segmented_property_type"],
) -> CodedConcept | None:
    if not given.HasField(name):
        return None
    code: mask_pb2.CodedConcept = getattr(given, name)
    return CodedConcept(code.code_value, code.coding_scheme_designator, code.code_meaning)


def mask(value: Mask) -> mask_pb2.Mask:
    return mask_pb2.Mask(
        id=value.id,
        mask_group_id=value.mask_group_id,
        slice_index=value.slice_index,
        sop_instance_uid=value.sop_instance_uid or "",
        label_name=value.label_name or "",
        file_path=value.file_path,
        mime_type=value.mime_type,
        file_size=value.file_size,
        checksum=value.checksum or "",
        width=value.width or 0,
        height=value.height or 0,
        created_at=timestamp(value.created_at),
    )


_PACS_STATUSES = {
    PacsStatus.NOT_REQUESTED: mask_pb2.PACS_STORE_STATUS_NOT_REQUESTED,
    PacsStatus.STORED: mask_pb2.PACS_STORE_STATUS_STORED,
    PacsStatus.FAILED: mask_pb2.PACS_STORE_STATUS_FAILED,
}


def mask_group_export(value: MaskGroupExport) -> mask_pb2.MaskGroupExport:
    return mask_pb2.MaskGroupExport(
        id=value.id,
        mask_group_id=value.mask_group_id,
        seg_series_uid=value.seg_series_uid,
        seg_sop_instance_uid=value.seg_sop_instance_uid,
        object_key=value.object_key,
        size_bytes=value.size_bytes,
        pacs_status=_PACS_STATUSES[value.pacs_status],
        pacs_failure_reason=value.pacs_failure_reason or "",
        series_number=value.series_number,
        segment_count=value.segment_count,
        created_by=value.created_by or 0,
        created_at=timestamp(value.created_at),
    )
