"""Between domain objects and protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2

from pacs_grpc.domain.annotation import Annotation, AnnotationEvent, EventType
from pacs_grpc.domain.errors import InvalidArgument
from pacs_grpc.domain.identity import Project, ProjectMember, User
from pacs_grpc.domain.masks import Mask, MaskGroup


def timestamp(value: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(value)
    return message


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
    )


def member(value: ProjectMember) -> identity_pb2.ProjectMember:
    return identity_pb2.ProjectMember(
        project_id=value.project_id,
        user_id=value.user_id,
        username=value.username,
        role=identity_pb2.ProjectRole.ValueType(int(value.role)),
        created_at=timestamp(value.created_at),
    )


def annotation(value: Annotation) -> annotation_pb2.Annotation:
    message = annotation_pb2.Annotation(
        id=value.id,
        project_id=value.project_id,
        user_id=value.user_id,
        study_uid=value.study_uid,
        series_uid=value.series_uid or "",
        instance_uid=value.instance_uid or "",
        annotation_type=value.annotation_type,
        viewer_software=value.viewer_software or "",
        etag=value.etag,
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
    )
    message.annotation_data.update(value.annotation_data)
    if value.measurement_values is not None:
        json_format.ParseDict(value.measurement_values, message.measurement_values)
    return message


_EVENT_TYPES = {
    EventType.CREATED: annotation_pb2.ANNOTATION_EVENT_TYPE_CREATED,
    EventType.UPDATED: annotation_pb2.ANNOTATION_EVENT_TYPE_UPDATED,
    EventType.DELETED: annotation_pb2.ANNOTATION_EVENT_TYPE_DELETED,
}


def annotation_event(value: AnnotationEvent) -> annotation_pb2.WatchAnnotationsResponse:
    message = annotation_pb2.WatchAnnotationsResponse(
        event_id=value.event_id,
        event_type=_EVENT_TYPES[value.event_type],
        annotation_id=value.annotation_id,
        occurred_at=timestamp(value.occurred_at),
    )
    if value.annotation is not None and value.event_type is not EventType.DELETED:
        message.annotation.CopyFrom(annotation(value.annotation))
    else:
        message.annotation.id = value.annotation_id
        message.annotation.project_id = value.project_id
        message.annotation.study_uid = value.study_uid
    return message


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
    return mask_pb2.MaskGroup(
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
    )


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
