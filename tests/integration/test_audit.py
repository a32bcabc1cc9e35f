"""Every audited RPC leaves exactly one audit_log row; nobody can take it back."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.message import Message
from grpc import aio
from pacs.v1 import identity_pb2, identity_pb2_grpc
from psycopg import sql

from pacs_devstack.issuer import subject_for
from pacs_devstack.stack import LocalStack
from tests.support.projects import VIEWER, new_team
from tests.support.users import ApiUser, login, unique_name


@pytest.fixture(scope="module")
async def people(live_stack: LocalStack, channel: aio.Channel) -> dict[str, ApiUser | int]:
    assert live_stack.issuer is not None
    team = await new_team(channel, live_stack.issuer, unique_name("audited"), {"viewer": VIEWER})
    outsider = await login(channel, live_stack.issuer, unique_name("outsider"))
    return {
        "admin": team.admin,
        "viewer": team["viewer"],
        "outsider": outsider,
        "project": team.project_id,
    }


def _rows(database_url: str, request_id: str) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "select action, outcome, error_code, project_id, subject from audit_log"
            " where request_id = %s",
            [request_id],
        ).fetchall()


@pytest.mark.parametrize(
    ("actor", "method", "make_request", "outcome", "code"),
    [
        ("viewer", "GetProject", "project", "ok", None),
        ("viewer", "ListProjectMembers", "project", "ok", None),
        ("viewer", "AddProjectMember", "add", "denied", "PERMISSION_DENIED"),
        ("outsider", "GetProject", "project", "denied", "NOT_FOUND"),
        ("viewer", "CreateProject", "create", "denied", "PERMISSION_DENIED"),
        ("viewer", "GetProject", "bad", "error", "INVALID_ARGUMENT"),
        ("admin", "AddProjectMember", "add", "ok", None),
    ],
)
async def test_each_call_leaves_exactly_one_row(
    live_stack: LocalStack,
    channel: aio.Channel,
    people: dict[str, ApiUser | int],
    actor: str,
    method: str,
    make_request: str,
    outcome: str,
    code: str | None,
) -> None:
    user = people[actor]
    project_id = people["project"]
    assert isinstance(user, ApiUser)
    assert isinstance(project_id, int)
    spare = people["outsider"]
    assert isinstance(spare, ApiUser)
    request = _request(make_request, method, project_id, spare.user_id)
    request_id = uuid.uuid4().hex
    stub = identity_pb2_grpc.IdentityServiceStub(channel)
    got: str | None = None
    try:
        await getattr(stub, method)(request, metadata=user.metadata(request_id))
    except aio.AioRpcError as error:
        got = error.code().name
    assert got == code
    rows = _rows(live_stack.database_url, request_id)
    assert len(rows) == 1, rows
    action, got_outcome, error_code, audited_project, subject = rows[0]
    assert (action, got_outcome, error_code) == (method, outcome, code)
    assert subject == subject_for(user.username)
    if make_request in ("project", "add"):
        assert audited_project == project_id


async def test_a_bad_token_writes_nothing(live_stack: LocalStack, channel: aio.Channel) -> None:
    assert live_stack.issuer is not None
    request_id = uuid.uuid4().hex
    expired = live_stack.issuer.mint(unique_name("late"), ttl_seconds=-3600)
    stub = identity_pb2_grpc.IdentityServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.GetCurrentUser(
            identity_pb2.GetCurrentUserRequest(),
            metadata=(("authorization", f"Bearer {expired}"), ("x-request-id", request_id)),
        )
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details() == "token expired"
    assert _rows(live_stack.database_url, request_id) == []


def test_the_application_role_cannot_change_or_delete_audit_rows(live_stack: LocalStack) -> None:
    """The grants documented in migration 0001, applied to a throwaway role."""
    role = f"pacs_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(live_stack.database_url, autocommit=True) as conn:
        ident = sql.Identifier(role)
        conn.execute(sql.SQL("create role {} nologin").format(ident))
        try:
            conn.execute(sql.SQL("grant usage on schema public to {}").format(ident))
            conn.execute(
                sql.SQL(
                    "grant select, insert, update, delete on all tables in schema public to {}"
                ).format(ident)
            )
            conn.execute(sql.SQL("revoke update, delete on audit_log from {}").format(ident))
            _as_role(conn, ident, "insert into audit_log (action, outcome) values ('x', 'ok')")
            for statement in (
                "update audit_log set outcome = 'error'",
                "delete from audit_log",
                "truncate audit_log",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    _as_role(conn, ident, statement)
        finally:
            conn.execute(sql.SQL("drop owned by {}").format(ident))
            conn.execute(sql.SQL("drop role {}").format(ident))


def _as_role(conn: psycopg.Connection[Any], role: sql.Identifier, statement: str) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("set local role {}").format(role))
        conn.execute(sql.SQL(statement))


def _request(kind: str, method: str, project_id: int, spare_id: int) -> Message:
    if kind == "project":
        request_class: type[Message] = getattr(identity_pb2, f"{method}Request")
        return request_class(project_id=project_id)
    if kind == "add":
        return identity_pb2.AddProjectMemberRequest(
            project_id=project_id, user_id=spare_id, role=identity_pb2.PROJECT_ROLE_VIEWER
        )
    if kind == "create":
        return identity_pb2.CreateProjectRequest(
            project=identity_pb2.Project(name=unique_name("x"))
        )
    return identity_pb2.GetProjectRequest(project_id=0)
