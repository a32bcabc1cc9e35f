"""check_access and authorize_project: who learns what about a project they may not use."""

from __future__ import annotations

import pytest

from pacs_grpc.domain.errors import DomainError, FailedPrecondition, NotFound, PermissionDenied
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.services.context import authorize_project, check_access
from tests.fakes import builders
from tests.fakes.builders import World

VIEWER, ANNOTATOR, OWNER = ProjectRole.VIEWER, ProjectRole.ANNOTATOR, ProjectRole.OWNER
REVIEWER = ProjectRole.REVIEWER
# A method for each project requirement of the RPC table.
NEEDS = {
    VIEWER: "GetProject",
    ANNOTATOR: "CreateAnnotation",
    OWNER: "AddProjectMember",
    REVIEWER: "ApproveAnnotation",
}


def _check(
    role: ProjectRole | None, needed: ProjectRole, *, active: bool = True, admin: bool = False
) -> ProjectRole | type[DomainError]:
    w = builders.world()
    who = builders.caller(w.db.seed_user("carol"), platform_admin=admin)
    try:
        return check_access(
            builders.call(NEEDS[needed], who), role, project_active=active, what="project"
        )
    except DomainError as error:
        return type(error)


@pytest.mark.parametrize(
    ("role", "needed", "expected"),
    [
        (None, VIEWER, NotFound),
        (None, OWNER, NotFound),
        (VIEWER, VIEWER, VIEWER),
        (VIEWER, ANNOTATOR, PermissionDenied),
        (ANNOTATOR, ANNOTATOR, ANNOTATOR),
        (ANNOTATOR, OWNER, PermissionDenied),
        # The effective role is the member's own, not the one asked for.
        (OWNER, VIEWER, OWNER),
        (OWNER, OWNER, OWNER),
        # Reviewers read and review; they neither write nor manage, and writers do not review.
        (REVIEWER, VIEWER, REVIEWER),
        (REVIEWER, REVIEWER, REVIEWER),
        (REVIEWER, ANNOTATOR, PermissionDenied),
        (REVIEWER, OWNER, PermissionDenied),
        (ANNOTATOR, REVIEWER, PermissionDenied),
        (VIEWER, REVIEWER, PermissionDenied),
        (OWNER, REVIEWER, OWNER),
    ],
)
def test_active_projects_answer_by_role(
    role: ProjectRole | None, needed: ProjectRole, expected: object
) -> None:
    assert _check(role, needed) == expected


@pytest.mark.parametrize(
    ("role", "needed", "expected"),
    [
        # Reading a deactivated project goes on...
        (VIEWER, VIEWER, VIEWER),
        (OWNER, VIEWER, OWNER),
        # ...changing it does not, whatever the role...
        (ANNOTATOR, ANNOTATOR, FailedPrecondition),
        (OWNER, OWNER, FailedPrecondition),
        # ...and a caller who could not change it anyway hears that first.
        (VIEWER, ANNOTATOR, PermissionDenied),
        (None, ANNOTATOR, NotFound),
    ],
)
def test_deactivated_projects_refuse_writes_but_allow_reads(
    role: ProjectRole | None, needed: ProjectRole, expected: object
) -> None:
    assert _check(role, needed, active=False) == expected


def test_platform_administrators_act_as_owners_without_a_membership() -> None:
    assert _check(None, OWNER, admin=True) is OWNER
    assert _check(VIEWER, ANNOTATOR, admin=True) is OWNER
    # Owners too are refused changes to a deactivated project.
    assert _check(None, ANNOTATOR, active=False, admin=True) is FailedPrecondition


def test_an_rpc_without_a_project_requirement_is_a_programming_error() -> None:
    w = builders.world()
    call = builders.call("ListProjects", builders.caller(w.db.seed_user("carol")))
    with pytest.raises(RuntimeError, match="ListProjects is not a project-scoped RPC"):
        check_access(call, VIEWER, project_active=True, what="project")


def test_the_refusal_names_what_the_rpc_needs() -> None:
    w = builders.world()
    call = builders.call("AddProjectMember", builders.caller(w.db.seed_user("carol")))
    with pytest.raises(PermissionDenied, match="this needs the owner role in the project"):
        check_access(call, ANNOTATOR, project_active=True, what="project")


async def _authorize(
    w: World, method: str, project_id: int, *, admin: bool = False, user_name: str = "dave"
) -> tuple[ProjectRole, int | None] | DomainError:
    who = builders.caller(w.db.seed_user(user_name), platform_admin=admin)
    call = builders.call(method, who)
    try:
        async with w.transactions.transaction() as tx:
            _, role = await authorize_project(w.projects, tx, call, project_id)
    except DomainError as error:
        assert call.audit.project_id == project_id
        return error
    return role, call.audit.project_id


async def test_a_missing_project_and_a_foreign_one_look_the_same() -> None:
    w = builders.world()
    foreign = w.db.seed_project("foreign")
    missing = await _authorize(w, "GetProject", foreign.id + 1, user_name="a")
    not_member = await _authorize(w, "GetProject", foreign.id, user_name="b")
    assert isinstance(missing, NotFound)
    assert isinstance(not_member, NotFound)
    assert str(missing) == str(not_member) == "project not found"


async def test_authorize_project_records_the_project_and_reads_the_role_in_it() -> None:
    w = builders.world()
    project = w.db.seed_project("p")
    member = w.db.seed_user("member")
    w.db.seed_member(project, member, ANNOTATOR)
    call = builders.call("CreateAnnotation", builders.caller(member))
    async with w.transactions.transaction() as tx:
        found, role = await authorize_project(w.projects, tx, call, project.id)
    assert (found, role) == (project, ANNOTATOR)
    assert call.audit.project_id == project.id


async def test_an_administrator_is_owner_of_every_existing_project_and_of_no_other() -> None:
    w = builders.world()
    project = w.db.seed_project("p")
    assert await _authorize(w, "AddProjectMember", project.id, admin=True, user_name="a") == (
        OWNER,
        project.id,
    )
    missing = await _authorize(w, "AddProjectMember", project.id + 1, admin=True, user_name="b")
    assert isinstance(missing, NotFound)


async def test_a_deactivated_project_refuses_its_owner_a_change() -> None:
    w = builders.world()
    project = w.db.seed_project("old", active=False)
    owner = w.db.seed_user("owner")
    w.db.seed_member(project, owner, OWNER)
    call = builders.call("AddProjectMember", builders.caller(owner))
    with pytest.raises(FailedPrecondition, match="deactivated"):
        async with w.transactions.transaction() as tx:
            await authorize_project(w.projects, tx, call, project.id)
    call = builders.call("ListProjectMembers", builders.caller(owner))
    async with w.transactions.transaction() as tx:
        assert await authorize_project(w.projects, tx, call, project.id) == (project, OWNER)
