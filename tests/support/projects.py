"""Arranging projects, members and annotations through the API, as a test's setup does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from google.protobuf import struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc, identity_pb2, identity_pb2_grpc

from pacs_devstack.issuer import DevIssuer
from tests.support.users import ApiUser, login, unique_name

Role: TypeAlias = identity_pb2.ProjectRole.ValueType
VIEWER: Role = identity_pb2.PROJECT_ROLE_VIEWER
ANNOTATOR: Role = identity_pb2.PROJECT_ROLE_ANNOTATOR
OWNER: Role = identity_pb2.PROJECT_ROLE_OWNER
REVIEWER: Role = identity_pb2.PROJECT_ROLE_REVIEWER


async def create_project(channel: aio.Channel, admin: ApiUser, name: str) -> int:
    """A new active project named `name`, created by a platform administrator."""
    reply = await identity_pb2_grpc.IdentityServiceStub(channel).CreateProject(
        identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name=name)),
        metadata=admin.metadata(),
        timeout=10,
    )
    return int(reply.project.id)


async def add_member(
    channel: aio.Channel, granter: ApiUser, project_id: int, user: ApiUser, role: Role
) -> None:
    """`user` made a member in `role` by `granter` (an administrator or the project's owner)."""
    await identity_pb2_grpc.IdentityServiceStub(channel).AddProjectMember(
        identity_pb2.AddProjectMemberRequest(
            project_id=project_id, user_id=user.user_id, role=role
        ),
        metadata=granter.metadata(),
        timeout=10,
    )


@dataclass(frozen=True)
class Team:
    """A project, the administrator who made it, and its members by the label they were
    asked for."""

    admin: ApiUser
    project_id: int
    members: Mapping[str, ApiUser]

    def __getitem__(self, label: str) -> ApiUser:
        return self.members[label]


async def new_team(
    channel: aio.Channel,
    issuer: DevIssuer,
    project_name: str,
    members: Mapping[str, Role],
    *,
    admin: ApiUser | None = None,
) -> Team:
    """A new project with a new user per label of `members` in that role (usernames are
    the labels made unique), created by `admin` or by a new platform administrator."""
    if admin is None:
        admin = await login(channel, issuer, unique_name("admin"), admin=True)
    project_id = await create_project(channel, admin, project_name)
    users: dict[str, ApiUser] = {}
    for label, role in members.items():
        users[label] = await login(channel, issuer, unique_name(label))
        await add_member(channel, admin, project_id, users[label], role)
    return Team(admin, project_id, users)


async def create_annotation(
    channel: aio.Channel,
    user: ApiUser,
    project_id: int,
    study_uid: str,
    data: Mapping[str, Any],
    *,
    series_uid: str = "",
    annotation_type: str = "segmentation",
) -> int:
    """The id of a new annotation by `user` in `project_id` on `study_uid` (and `series_uid`)."""
    annotation_data = struct_pb2.Struct()
    annotation_data.update(dict(data))
    reply = await annotation_pb2_grpc.AnnotationServiceStub(channel).CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(
            annotation=annotation_pb2.Annotation(
                project_id=project_id,
                study_uid=study_uid,
                series_uid=series_uid,
                annotation_type=annotation_type,
                annotation_data=annotation_data,
            )
        ),
        metadata=user.metadata(),
        timeout=10,
    )
    return int(reply.annotation.id)
