"""Between domain objects and protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp
from pacs.v1 import annotation_pb2, identity_pb2

from pacs_grpc.domain.annotation import Annotation, AnnotationEvent, EventType
from pacs_grpc.domain.identity import Project, ProjectMember, User


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


def json_object(message: Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def json_value(message: Value) -> Any:
    return json_format.MessageToDict(message)


def optional_time(message: Timestamp, present: bool) -> datetime | None:
    return message.ToDatetime(tzinfo=UTC) if present else None
