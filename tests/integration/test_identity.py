"""IdentityService on the real stack: profiles from tokens, projects, members."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from pacs.v1 import identity_pb2, identity_pb2_grpc

from pacs_devstack.issuer import DevIssuer, subject_for
from pacs_devstack.stack import LocalStack
from tests.support.projects import ANNOTATOR, OWNER, VIEWER, add_member, new_team
from tests.support.users import ApiUser, login, unique_name


@pytest.fixture(scope="module")
def identity(channel: aio.Channel) -> identity_pb2_grpc.IdentityServiceAsyncStub:
    return identity_pb2_grpc.IdentityServiceStub(channel)


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_first_call_creates_the_profile_from_the_claims(
    live_stack: LocalStack, identity: identity_pb2_grpc.IdentityServiceAsyncStub, issuer: DevIssuer
) -> None:
    name = unique_name("newcomer")
    token = issuer.mint(name, email=f"{name}@hospital.test")
    reply = await identity.GetCurrentUser(
        identity_pb2.GetCurrentUserRequest(), metadata=(("authorization", f"Bearer {token}"),)
    )
    assert reply.user.username == name
    assert reply.user.email == f"{name}@hospital.test"
    assert reply.user.keycloak_id == subject_for(name)
    assert reply.user.full_name == name.title()
    with psycopg.connect(live_stack.database_url) as conn:
        rows = conn.execute(
            "select count(*) from security_user where keycloak_id = %s", [subject_for(name)]
        ).fetchone()
    assert rows == (1,)


async def test_email_follows_keycloak_but_a_profile_edit_survives_an_unchanged_token(
    identity: identity_pb2_grpc.IdentityServiceAsyncStub, issuer: DevIssuer
) -> None:
    name = unique_name("mover")

    def auth(email: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {issuer.mint(name, email=email)}"),)

    first = await identity.Login(identity_pb2.LoginRequest(), metadata=auth("a@old.test"))
    edited = await identity.UpdateUser(
        identity_pb2.UpdateUserRequest(
            user_id=first.user.id,
            user=identity_pb2.User(email="mine@edit.test", department="Radiology"),
            update_mask=field_mask_pb2.FieldMask(paths=["email", "department"]),
        ),
        metadata=auth("a@old.test"),
    )
    assert edited.user.email == "mine@edit.test"
    assert edited.user.department == "Radiology"
    same_token = await identity.Login(identity_pb2.LoginRequest(), metadata=auth("a@old.test"))
    assert same_token.user.email == "mine@edit.test"
    changed = await identity.Login(identity_pb2.LoginRequest(), metadata=auth("b@new.test"))
    assert changed.user.email == "b@new.test"
    assert changed.user.department == "Radiology"


async def test_update_user_refuses_bad_masks_and_taken_emails(
    channel: aio.Channel, identity: identity_pb2_grpc.IdentityServiceAsyncStub, issuer: DevIssuer
) -> None:
    owner = await login(channel, issuer, unique_name("owner"))
    other = await login(channel, issuer, unique_name("other"))
    taken = (
        await identity.GetCurrentUser(
            identity_pb2.GetCurrentUserRequest(), metadata=other.metadata()
        )
    ).user.email

    async def update(user_id: int, paths: list[str], **values: Any) -> aio.AioRpcError:
        with pytest.raises(aio.AioRpcError) as raised:
            await identity.UpdateUser(
                identity_pb2.UpdateUserRequest(
                    user_id=user_id,
                    user=identity_pb2.User(**values),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                ),
                metadata=owner.metadata(),
            )
        return raised.value

    empty = await update(owner.user_id, [])
    assert empty.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (empty.details() or "").startswith("update_mask:")
    unknown = await update(owner.user_id, ["username"])
    assert unknown.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "username" in (unknown.details() or "")
    bad_email = await update(owner.user_id, ["email"], email="not-an-address")
    assert bad_email.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_email.details() or "").startswith("user.email:")
    duplicate = await update(owner.user_id, ["email"], email=taken.upper())
    assert duplicate.code() is grpc.StatusCode.ALREADY_EXISTS
    assert (duplicate.details() or "").startswith("user.email:")
    assert taken not in (duplicate.details() or "")
    someone_else = await update(other.user_id, ["phone"], phone="+41 44 000 00 00")
    assert someone_else.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_a_platform_admin_may_update_another_profile(
    channel: aio.Channel, identity: identity_pb2_grpc.IdentityServiceAsyncStub, issuer: DevIssuer
) -> None:
    admin = await login(channel, issuer, unique_name("admin"), admin=True)
    user = await login(channel, issuer, unique_name("user"))
    reply = await identity.UpdateUser(
        identity_pb2.UpdateUserRequest(
            user_id=user.user_id,
            user=identity_pb2.User(organization="University Hospital"),
            update_mask=field_mask_pb2.FieldMask(paths=["organization"]),
        ),
        metadata=admin.metadata(),
    )
    assert reply.user.organization == "University Hospital"


async def test_create_project_with_a_request_id_is_idempotent_under_concurrent_retries(
    live_stack: LocalStack,
    channel: aio.Channel,
    identity: identity_pb2_grpc.IdentityServiceAsyncStub,
    issuer: DevIssuer,
) -> None:
    admin = await login(channel, issuer, unique_name("admin"), admin=True)
    name = unique_name("Chest CT study")
    request = identity_pb2.CreateProjectRequest(
        project=identity_pb2.Project(name=name), request_id=unique_name("req")
    )
    replies = await asyncio.gather(
        *(identity.CreateProject(request, metadata=admin.metadata()) for _ in range(20))
    )
    assert len({r.project.id for r in replies}) == 1
    with psycopg.connect(live_stack.database_url) as conn:
        count = conn.execute(
            "select count(*) from security_project where name = %s", [name]
        ).fetchone()
    assert count == (1,)
    reused = identity_pb2.CreateProjectRequest(
        project=identity_pb2.Project(name=name + " (other)"), request_id=request.request_id
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await identity.CreateProject(reused, metadata=admin.metadata())
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("request_id:")


async def test_project_names_are_unique_and_required(
    channel: aio.Channel, identity: identity_pb2_grpc.IdentityServiceAsyncStub, issuer: DevIssuer
) -> None:
    admin = await login(channel, issuer, unique_name("admin"), admin=True)
    name = unique_name("MR brain")
    await identity.CreateProject(
        identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name=name)),
        metadata=admin.metadata(),
    )
    for project, code, field in (
        (identity_pb2.Project(name=name), grpc.StatusCode.ALREADY_EXISTS, "project.name"),
        (identity_pb2.Project(name="  "), grpc.StatusCode.INVALID_ARGUMENT, "project.name"),
        (identity_pb2.Project(name="x" * 201), grpc.StatusCode.INVALID_ARGUMENT, "project.name"),
    ):
        with pytest.raises(aio.AioRpcError) as raised:
            await identity.CreateProject(
                identity_pb2.CreateProjectRequest(project=project), metadata=admin.metadata()
            )
        assert raised.value.code() is code
        assert (raised.value.details() or "").startswith(field + ":")


async def _project_with_owner(
    channel: aio.Channel, issuer: DevIssuer
) -> tuple[ApiUser, ApiUser, int]:
    team = await new_team(channel, issuer, unique_name("p"), {"owner": OWNER})
    return team.admin, team["owner"], team.project_id


async def test_a_project_keeps_at_least_one_owner(
    channel: aio.Channel, identity: identity_pb2_grpc.IdentityServiceAsyncStub, issuer: DevIssuer
) -> None:
    _, owner, project_id = await _project_with_owner(channel, issuer)
    for call in (
        identity.RemoveProjectMember(
            identity_pb2.RemoveProjectMemberRequest(project_id=project_id, user_id=owner.user_id),
            metadata=owner.metadata(),
        ),
        identity.AddProjectMember(
            identity_pb2.AddProjectMemberRequest(
                project_id=project_id, user_id=owner.user_id, role=VIEWER
            ),
            metadata=owner.metadata(),
        ),
    ):
        assert await _code(call) is grpc.StatusCode.FAILED_PRECONDITION


async def test_members_page_through_without_gaps(
    channel: aio.Channel, identity: identity_pb2_grpc.IdentityServiceAsyncStub, issuer: DevIssuer
) -> None:
    admin, owner, project_id = await _project_with_owner(channel, issuer)
    members = [await login(channel, issuer, unique_name("m")) for _ in range(5)]
    for member in members:
        await add_member(channel, owner, project_id, member, VIEWER)
    seen: list[int] = []
    token = ""
    while True:
        page = await identity.ListProjectMembers(
            identity_pb2.ListProjectMembersRequest(
                project_id=project_id, page_size=2, page_token=token
            ),
            metadata=members[0].metadata(),
        )
        seen += [m.user_id for m in page.members]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted({owner.user_id, *(m.user_id for m in members)})
    wrong = identity.ListProjectMembers(
        identity_pb2.ListProjectMembersRequest(project_id=project_id, page_token="garbage!"),
        metadata=admin.metadata(),
    )
    assert await _code(wrong) is grpc.StatusCode.INVALID_ARGUMENT


async def test_deactivated_projects_stay_readable_and_refuse_changes(
    channel: aio.Channel, identity: identity_pb2_grpc.IdentityServiceAsyncStub, issuer: DevIssuer
) -> None:
    admin, owner, project_id = await _project_with_owner(channel, issuer)
    newcomer = await login(channel, issuer, unique_name("late"))
    reply = await identity.DeactivateProject(
        identity_pb2.DeactivateProjectRequest(project_id=project_id), metadata=admin.metadata()
    )
    assert reply.project.is_active is False
    got = await identity.GetProject(
        identity_pb2.GetProjectRequest(project_id=project_id), metadata=owner.metadata()
    )
    assert got.project.is_active is False
    add = identity.AddProjectMember(
        identity_pb2.AddProjectMemberRequest(
            project_id=project_id, user_id=newcomer.user_id, role=VIEWER
        ),
        metadata=owner.metadata(),
    )
    assert await _code(add) is grpc.StatusCode.FAILED_PRECONDITION
    listed = await identity.ListProjects(
        identity_pb2.ListProjectsRequest(), metadata=owner.metadata()
    )
    assert project_id not in {p.id for p in listed.projects}
    everything = await identity.ListProjects(
        identity_pb2.ListProjectsRequest(include_inactive=True), metadata=owner.metadata()
    )
    assert project_id in {p.id for p in everything.projects}


async def test_an_owner_allows_unapproved_exports_and_members_read_it(
    live_stack: LocalStack,
    channel: aio.Channel,
    identity: identity_pb2_grpc.IdentityServiceAsyncStub,
    issuer: DevIssuer,
) -> None:
    team = await new_team(channel, issuer, unique_name("p"), {"owner": OWNER, "viewer": VIEWER})
    before = await identity.GetProject(
        identity_pb2.GetProjectRequest(project_id=team.project_id), metadata=team.admin.metadata()
    )
    assert before.project.export_unapproved is False
    reply = await identity.UpdateProject(
        identity_pb2.UpdateProjectRequest(
            project_id=team.project_id,
            project=identity_pb2.Project(
                description="Liver CT", export_unapproved=True, name="ignored"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["export_unapproved", "description"]),
        ),
        metadata=team["owner"].metadata(),
    )
    assert (reply.project.export_unapproved, reply.project.description) == (True, "Liver CT")
    assert reply.project.name == before.project.name
    assert reply.project.updated_at.ToDatetime() > before.project.updated_at.ToDatetime()
    got = await identity.GetProject(
        identity_pb2.GetProjectRequest(project_id=team.project_id),
        metadata=team["viewer"].metadata(),
    )
    assert got.project == reply.project
    listed = await identity.ListProjects(
        identity_pb2.ListProjectsRequest(), metadata=team["viewer"].metadata()
    )
    assert [p for p in listed.projects if p.id == team.project_id] == [reply.project]
    with psycopg.connect(live_stack.database_url) as conn:
        row = conn.execute(
            "select export_unapproved, description from security_project where id = %s",
            [team.project_id],
        ).fetchone()
    assert row == (True, "Liver CT")


async def test_update_project_is_for_owners_and_names_a_bad_mask(
    channel: aio.Channel, identity: identity_pb2_grpc.IdentityServiceAsyncStub, issuer: DevIssuer
) -> None:
    team = await new_team(
        channel, issuer, unique_name("p"), {"owner": OWNER, "annotator": ANNOTATOR}
    )
    outsider = await login(channel, issuer, unique_name("outsider"))

    async def update(who: ApiUser, paths: list[str]) -> aio.AioRpcError:
        with pytest.raises(aio.AioRpcError) as raised:
            await identity.UpdateProject(
                identity_pb2.UpdateProjectRequest(
                    project_id=team.project_id,
                    project=identity_pb2.Project(export_unapproved=True),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                ),
                metadata=who.metadata(),
            )
        return raised.value

    refused = await update(team["annotator"], ["export_unapproved"])
    assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
    hidden = await update(outsider, ["export_unapproved"])
    assert hidden.code() is grpc.StatusCode.NOT_FOUND
    unknown = await update(team["owner"], ["name"])
    assert unknown.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (unknown.details() or "").startswith("update_mask:")
    got = await identity.GetProject(
        identity_pb2.GetProjectRequest(project_id=team.project_id),
        metadata=team["owner"].metadata(),
    )
    assert got.project.export_unapproved is False
