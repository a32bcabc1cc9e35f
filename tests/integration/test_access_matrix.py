"""Every IdentityService RPC, by every role, in its own project and across projects.

The expectations come from the RPC table itself, so the test follows it: a
member with the required role succeeds, a member without it is denied, and
anybody outside the project cannot tell the project exists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from grpc import aio
from pacs.v1 import identity_pb2, identity_pb2_grpc

from pacs_devstack.stack import LocalStack
from pacs_grpc.api.access import ACCESS_BY_METHOD
from pacs_grpc.domain.access import Access
from pacs_grpc.domain.identity import ProjectRole
from tests.support.projects import new_team
from tests.support.users import ApiUser, login, unique_name

SERVICE = "/pacs.v1.IdentityService/"
ROLES = (ProjectRole.VIEWER, ProjectRole.ANNOTATOR, ProjectRole.REVIEWER, ProjectRole.OWNER)


@dataclass
class World:
    admin: ApiUser
    projects: dict[str, int]
    members: dict[tuple[str, ProjectRole], ApiUser]
    outsider: ApiUser
    spare: ApiUser


@pytest.fixture(scope="module")
async def stub(live_stack: LocalStack) -> AsyncIterator[identity_pb2_grpc.IdentityServiceAsyncStub]:
    assert live_stack.server is not None
    async with aio.insecure_channel(live_stack.server.address) as channel:
        yield identity_pb2_grpc.IdentityServiceStub(channel)


@pytest.fixture(scope="module")
async def world(live_stack: LocalStack) -> World:
    assert live_stack.server is not None
    assert live_stack.issuer is not None
    async with aio.insecure_channel(live_stack.server.address) as channel:
        admin = await login(channel, live_stack.issuer, unique_name("admin"), admin=True)
        projects, members = {}, {}
        for label in ("A", "B"):
            team = await new_team(
                channel,
                live_stack.issuer,
                unique_name(label),
                {
                    f"{label}-{role.name}": identity_pb2.ProjectRole.ValueType(role.value)
                    for role in ROLES
                },
                admin=admin,
            )
            projects[label] = team.project_id
            for role in ROLES:
                members[(label, role)] = team[f"{label}-{role.name}"]
        outsider = await login(channel, live_stack.issuer, unique_name("outsider"))
        spare = await login(channel, live_stack.issuer, unique_name("spare"))
    return World(admin, projects, members, outsider, spare)


RequestFor = Callable[[int, ApiUser, World], Message]

# One request per IdentityService RPC, aimed at `project_id`.
REQUESTS: dict[str, RequestFor] = {
    "Login": lambda p, actor, w: identity_pb2.LoginRequest(),
    "GetCurrentUser": lambda p, actor, w: identity_pb2.GetCurrentUserRequest(),
    "UpdateUser": lambda p, actor, w: identity_pb2.UpdateUserRequest(
        user_id=actor.user_id,
        user=identity_pb2.User(department="Radiology"),
        update_mask=field_mask_pb2.FieldMask(paths=["department"]),
    ),
    "CreateProject": lambda p, actor, w: identity_pb2.CreateProjectRequest(
        project=identity_pb2.Project(name=unique_name("new"))
    ),
    "GetProject": lambda p, actor, w: identity_pb2.GetProjectRequest(project_id=p),
    "ListProjects": lambda p, actor, w: identity_pb2.ListProjectsRequest(),
    "DeactivateProject": lambda p, actor, w: identity_pb2.DeactivateProjectRequest(project_id=p),
    "UpdateProject": lambda p, actor, w: identity_pb2.UpdateProjectRequest(
        project_id=p,
        project=identity_pb2.Project(description="reviewed before export"),
        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
    ),
    "AddProjectMember": lambda p, actor, w: identity_pb2.AddProjectMemberRequest(
        project_id=p, user_id=w.spare.user_id, role=identity_pb2.PROJECT_ROLE_VIEWER
    ),
    "ListProjectMembers": lambda p, actor, w: identity_pb2.ListProjectMembersRequest(project_id=p),
    "RemoveProjectMember": lambda p, actor, w: identity_pb2.RemoveProjectMemberRequest(
        project_id=p, user_id=w.spare.user_id
    ),
}


def test_every_identity_rpc_has_a_matrix_request() -> None:
    in_table = {m.removeprefix(SERVICE) for m in ACCESS_BY_METHOD if m.startswith(SERVICE)}
    assert set(REQUESTS) == in_table


def _expected(access: Access, role: ProjectRole | None) -> grpc.StatusCode:
    if access is Access.AUTHENTICATED:
        return grpc.StatusCode.OK
    if access is Access.PLATFORM_ADMIN:
        return grpc.StatusCode.PERMISSION_DENIED
    needed = access.project_role
    assert needed is not None
    if role is None:
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.OK if role.includes(needed) else grpc.StatusCode.PERMISSION_DENIED


async def _invoke(
    stub: identity_pb2_grpc.IdentityServiceAsyncStub, method: str, request: Message, actor: ApiUser
) -> grpc.StatusCode:
    try:
        await getattr(stub, method)(request, metadata=actor.metadata(), timeout=10)
    except aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_each_role_can_do_exactly_what_the_table_says(
    stub: identity_pb2_grpc.IdentityServiceAsyncStub, world: World
) -> None:
    """Actors of A and B, and an outsider, call every RPC against project A."""
    mismatches = []
    cross_project_successes = []
    actors: list[tuple[str, ProjectRole | None, ApiUser]] = [
        (label, role, user) for (label, role), user in world.members.items()
    ]
    actors.append(("none", None, world.outsider))
    for method, request_for in REQUESTS.items():
        access = ACCESS_BY_METHOD[SERVICE + method]
        for label, role, actor in actors:
            if method == "RemoveProjectMember":
                # Put the target back, so every actor removes an existing member.
                await _invoke(
                    stub,
                    "AddProjectMember",
                    REQUESTS["AddProjectMember"](world.projects["A"], world.admin, world),
                    world.admin,
                )
            role_in_a = role if label == "A" else None
            expected = _expected(access, role_in_a)
            got = await _invoke(stub, method, request_for(world.projects["A"], actor, world), actor)
            if got is not expected:
                mismatches.append((method, label, role, expected.name, got.name))
            if label != "A" and access.project_role is not None and got is grpc.StatusCode.OK:
                cross_project_successes.append((method, label, role))
    assert cross_project_successes == []
    assert mismatches == []


async def test_listing_shows_only_the_callers_projects(
    stub: identity_pb2_grpc.IdentityServiceAsyncStub, world: World
) -> None:
    for (label, _), actor in world.members.items():
        reply = await stub.ListProjects(
            identity_pb2.ListProjectsRequest(), metadata=actor.metadata()
        )
        assert [p.id for p in reply.projects] == [world.projects[label]]
    outsider = await stub.ListProjects(
        identity_pb2.ListProjectsRequest(), metadata=world.outsider.metadata()
    )
    assert list(outsider.projects) == []
    admin = await stub.ListProjects(
        identity_pb2.ListProjectsRequest(page_size=500), metadata=world.admin.metadata()
    )
    assert set(world.projects.values()) <= {p.id for p in admin.projects}


async def test_missing_and_forbidden_projects_look_the_same(
    stub: identity_pb2_grpc.IdentityServiceAsyncStub, world: World
) -> None:
    outsider = world.outsider
    replies = []
    for project_id in (world.projects["A"], 9_000_000_000):
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.GetProject(
                identity_pb2.GetProjectRequest(project_id=project_id), metadata=outsider.metadata()
            )
        replies.append((raised.value.code(), raised.value.details()))
    assert replies[0] == replies[1]
    assert replies[0][0] is grpc.StatusCode.NOT_FOUND
