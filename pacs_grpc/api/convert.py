"""Domain objects to protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from pacs.v1 import identity_pb2

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
