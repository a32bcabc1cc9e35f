"""IdentityUseCases and UserDirectory on in-memory fakes: results, refusals, audit rows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from pacs_grpc.domain.audit import AuditEntry, AuditTrailClosed
from pacs_grpc.domain.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from pacs_grpc.domain.identity import Caller, Principal, Project, ProjectRole, User
from pacs_grpc.services.context import CallContext
from pacs_grpc.services.identity import IdentityUseCases
from tests.fakes import builders
from tests.fakes.builders import World
from tests.fakes.database import FakeTx

VIEWER, ANNOTATOR, OWNER = ProjectRole.VIEWER, ProjectRole.ANNOTATOR, ProjectRole.OWNER


def _ok(call: CallContext, **fields: Any) -> AuditEntry:
    """The row a successful call writes: the gate's fields plus what the use case learnt."""
    return AuditEntry(
        action=call.audit.action,
        outcome="ok",
        subject=call.caller.principal.subject,
        client_id=call.caller.principal.client_id,
        request_id=call.audit.request_id,
        **fields,
    )


class Setup:
    """A project with an owner, an annotator and a viewer, and a platform administrator."""

    def __init__(self) -> None:
        self.w: World = builders.world()
        self.use_cases: IdentityUseCases[FakeTx] = builders.identity_use_cases(self.w)
        db = self.w.db
        self.project = db.seed_project("chest-ct")
        self.owner = db.seed_user("olga")
        self.annotator = db.seed_user("anna")
        self.viewer = db.seed_user("victor")
        self.outsider = db.seed_user("oscar")
        self.admin = db.seed_user("root")
        db.seed_member(self.project, self.owner, OWNER)
        db.seed_member(self.project, self.annotator, ANNOTATOR)
        db.seed_member(self.project, self.viewer, VIEWER)

    def call(self, method: str, user: User, *, request_id: str = "rpc-1") -> CallContext:
        return builders.call(
            method,
            builders.caller(user, platform_admin=user is self.admin),
            request_id=request_id,
        )

    @property
    def audit(self) -> list[AuditEntry]:
        return self.w.audit.rows


@pytest.fixture
def s() -> Setup:
    return Setup()


# Login, GetCurrentUser, UpdateUser


async def test_login_returns_the_profile_and_memberships_and_audits_the_user(s: Setup) -> None:
    other = s.w.db.seed_project("archived", active=False)
    s.w.db.seed_member(other, s.viewer, OWNER)
    call = s.call("Login", s.viewer)
    user, memberships = await s.use_cases.login(call)
    assert user == s.viewer
    # In project order, deactivated projects included.
    assert [(m.project_id, m.role, m.username) for m in memberships] == [
        (s.project.id, VIEWER, "victor"),
        (other.id, OWNER, "victor"),
    ]
    assert s.audit == [_ok(call, resource_type="user", resource_ids=(s.viewer.id,))]
    assert call.audit.recorded


async def test_a_caller_without_a_profile_is_not_found_and_writes_no_row(s: Setup) -> None:
    ghost = Caller(Principal(subject="s", username="ghost"), user_id=999, platform_admin=False)
    call = builders.call("GetCurrentUser", ghost)
    with pytest.raises(NotFound, match="user not found"):
        await s.use_cases.current_user(call)
    assert s.audit == []
    # Left for the gate, which writes the refusal's row.
    assert not call.audit.recorded


async def test_a_user_edits_their_profile_trimmed_and_cleared(s: Setup) -> None:
    s.w.clock.advance(60)
    call = s.call("UpdateUser", s.viewer)
    updated = await s.use_cases.update_user(
        call,
        s.viewer.id,
        ["full_name", "email", "phone"],
        {"full_name": "  Victor V  ", "email": "v@example.org", "phone": ""},
    )
    assert (updated.full_name, updated.email, updated.phone) == ("Victor V", "v@example.org", None)
    assert updated.updated_at == s.w.clock.now() != s.viewer.updated_at
    assert (await s.use_cases.current_user(s.call("GetCurrentUser", s.viewer))) == updated
    assert s.audit[0] == _ok(call, resource_type="user", resource_ids=(s.viewer.id,))


async def test_only_the_user_or_an_administrator_edits_a_profile(s: Setup) -> None:
    values = {"organization": "Clinic"}
    with pytest.raises(PermissionDenied):
        await s.use_cases.update_user(
            s.call("UpdateUser", s.owner), s.viewer.id, ["organization"], values
        )
    assert s.w.db.transactions_opened == 0
    updated = await s.use_cases.update_user(
        s.call("UpdateUser", s.admin), s.viewer.id, ["organization"], values
    )
    assert updated.organization == "Clinic"


async def test_an_email_taken_in_other_case_is_refused_and_nothing_changes(s: Setup) -> None:
    await s.use_cases.update_user(s.call("UpdateUser", s.owner), s.owner.id, ["email"], {
        "email": "Shared@Example.org"
    })  # fmt: skip
    with pytest.raises(AlreadyExists) as refused:
        await s.use_cases.update_user(
            s.call("UpdateUser", s.viewer),
            s.viewer.id,
            ["email", "department"],
            {"email": "shared@example.org", "department": "Radiology"},
        )
    assert refused.value.field == "user.email"
    assert s.w.db.tables.users[s.viewer.id].user == s.viewer
    assert [row.action for row in s.audit] == ["UpdateUser"]


@pytest.mark.parametrize(
    ("paths", "values", "field"),
    [
        ([], {}, "update_mask"),
        (["username"], {"username": "x"}, "update_mask"),
        (["email"], {"email": "not-an-address"}, "user.email"),
        (["phone"], {"phone": "call me"}, "user.phone"),
        (["full_name"], {"full_name": "x" * 201}, "user.full_name"),
    ],
)
async def test_bad_profile_input_names_its_field_before_any_transaction(
    s: Setup, paths: list[str], values: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.update_user(s.call("UpdateUser", s.viewer), s.viewer.id, paths, values)
    assert refused.value.field == field
    assert s.w.db.transactions_opened == 0


async def test_editing_a_missing_user_is_not_found(s: Setup) -> None:
    with pytest.raises(NotFound):
        await s.use_cases.update_user(
            s.call("UpdateUser", s.admin), 999, ["phone"], {"phone": "+41 1"}
        )
    assert s.audit == []


# CreateProject


async def test_create_project_audits_the_new_project(s: Setup) -> None:
    call = s.call("CreateProject", s.admin)
    project = await s.use_cases.create_project(call, "  Brain MR ", " studies ", "")
    assert (project.name, project.description, project.is_active) == (
        "Brain MR",
        "studies",
        True,
    )
    assert s.w.db.tables.projects[project.id] == project
    assert s.audit == [
        _ok(call, project_id=project.id, resource_type="project", resource_ids=(project.id,))
    ]
    # Without a request_id nothing is remembered.
    assert s.w.db.tables.idempotency == {}


async def test_create_project_retried_with_its_request_id_returns_the_first(s: Setup) -> None:
    first_call = s.call("CreateProject", s.admin, request_id="rpc-1")
    first = await s.use_cases.create_project(first_call, "Brain MR", "", "req-7")
    # A retry differing only in what validation trims is the same request.
    retry_call = s.call("CreateProject", s.admin, request_id="rpc-2")
    again = await s.use_cases.create_project(retry_call, " Brain MR ", "  ", "req-7")
    assert again == first
    assert [p.name for p in s.w.db.tables.projects.values()].count("Brain MR") == 1
    assert list(s.w.db.tables.idempotency) == [(s.admin.id, "CreateProject", "req-7")]
    # Each call has its own row, both naming the one project.
    assert s.audit == [
        _ok(c, project_id=first.id, resource_type="project", resource_ids=(first.id,))
        for c in (first_call, retry_call)
    ]


async def test_a_request_id_reused_for_another_project_is_refused(s: Setup) -> None:
    await s.use_cases.create_project(s.call("CreateProject", s.admin), "Brain MR", "", "req-7")
    before = dict(s.w.db.tables.projects)
    call = s.call("CreateProject", s.admin)
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.create_project(call, "Brain MR", "other description", "req-7")
    assert refused.value.field == "request_id"
    assert s.w.db.tables.projects == before
    assert len(s.audit) == 1
    assert not call.audit.recorded


async def test_request_ids_are_per_caller(s: Setup) -> None:
    other_admin = s.w.db.seed_user("root2")
    first = await s.use_cases.create_project(s.call("CreateProject", s.admin), "A", "", "req-1")
    call = builders.call("CreateProject", builders.caller(other_admin, platform_admin=True))
    second = await s.use_cases.create_project(call, "B", "", "req-1")
    assert first.id != second.id
    assert len(s.w.db.tables.idempotency) == 2


async def test_a_taken_project_name_is_refused_and_leaves_nothing(s: Setup) -> None:
    call = s.call("CreateProject", s.admin)
    with pytest.raises(AlreadyExists) as refused:
        await s.use_cases.create_project(call, "chest-ct", "", "req-9")
    assert refused.value.field == "project.name"
    assert list(s.w.db.tables.projects) == [s.project.id]
    assert s.w.db.tables.idempotency == {}
    assert s.audit == []


@pytest.mark.parametrize(
    ("name", "description", "request_id", "field"),
    [
        ("   ", "", "", "project.name"),
        ("x" * 201, "", "", "project.name"),
        ("ok", "d" * 2001, "", "project.description"),
        ("ok", "", "has space", "request_id"),
    ],
)
async def test_bad_project_input_names_its_field(
    s: Setup, name: str, description: str, request_id: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.create_project(
            s.call("CreateProject", s.admin), name, description, request_id
        )
    assert refused.value.field == field
    assert s.w.db.transactions_opened == 0


# GetProject, ListProjects, DeactivateProject


async def test_get_project_for_a_member_and_not_for_anyone_else(s: Setup) -> None:
    call = s.call("GetProject", s.viewer)
    assert await s.use_cases.get_project(call, s.project.id) == s.project
    assert s.audit == [
        _ok(call, project_id=s.project.id, resource_type="project", resource_ids=(s.project.id,))
    ]
    with pytest.raises(NotFound):
        await s.use_cases.get_project(s.call("GetProject", s.outsider), s.project.id)
    with pytest.raises(InvalidArgument, match="project_id"):
        await s.use_cases.get_project(s.call("GetProject", s.viewer), 0)


async def _all_project_pages(
    s: Setup, user: User, page_size: int, *, include_inactive: bool = False
) -> list[list[int]]:
    pages, token = [], ""
    while True:
        page = await s.use_cases.list_projects(
            s.call("ListProjects", user), page_size, token, include_inactive
        )
        pages.append([p.id for p in page.items])
        token = page.next_page_token
        if not token:
            return pages


async def test_list_projects_pages_through_the_callers_projects_in_id_order(s: Setup) -> None:
    mine = [s.project] + [s.w.db.seed_project(f"p{i}") for i in range(4)]
    for project in mine[1:]:
        s.w.db.seed_member(project, s.viewer, VIEWER)
    s.w.db.seed_project("not mine")
    ids = [p.id for p in mine]
    assert await _all_project_pages(s, s.viewer, 2) == [ids[0:2], ids[2:4], ids[4:5]]
    # Exactly full pages end without an empty one: the use case reads one row more.
    assert await _all_project_pages(s, s.viewer, 5) == [ids]


async def test_list_projects_audits_the_ids_it_returned(s: Setup) -> None:
    s.w.db.seed_member(s.w.db.seed_project("second"), s.viewer, VIEWER)
    call = s.call("ListProjects", s.viewer)
    page = await s.use_cases.list_projects(call, 1, "", False)
    assert s.audit == [_ok(call, resource_type="project", resource_ids=(s.project.id,))]
    assert page.next_page_token


async def test_deactivated_projects_are_listed_only_when_asked_for(s: Setup) -> None:
    old = s.w.db.seed_project("old", active=False)
    s.w.db.seed_member(old, s.viewer, VIEWER)
    assert await _all_project_pages(s, s.viewer, 10) == [[s.project.id]]
    assert await _all_project_pages(s, s.viewer, 10, include_inactive=True) == [
        [s.project.id, old.id]
    ]


async def test_administrators_list_every_project(s: Setup) -> None:
    other = s.w.db.seed_project("nobody's")
    assert await _all_project_pages(s, s.admin, 10) == [[s.project.id, other.id]]
    assert await _all_project_pages(s, s.outsider, 10) == [[]]


async def test_a_project_page_token_is_bound_to_its_filter(s: Setup) -> None:
    s.w.db.seed_member(s.w.db.seed_project("second"), s.viewer, VIEWER)
    page = await s.use_cases.list_projects(s.call("ListProjects", s.viewer), 1, "", True)
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.list_projects(
            s.call("ListProjects", s.viewer), 1, page.next_page_token, False
        )
    assert refused.value.field == "page_token"
    with pytest.raises(InvalidArgument) as garbled:
        await s.use_cases.list_projects(s.call("ListProjects", s.viewer), 1, "%%%", True)
    assert garbled.value.field == "page_token"


@pytest.mark.parametrize("page_size", [-1, builders.MAX_PAGE_SIZE + 1])
async def test_page_sizes_out_of_bounds_are_refused(s: Setup, page_size: int) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.list_projects(s.call("ListProjects", s.admin), page_size, "", False)
    assert refused.value.field == "page_size"
    assert str(refused.value) == f"page_size: must be between 1 and {builders.MAX_PAGE_SIZE}"


async def test_page_size_zero_takes_the_default_capped_by_the_maximum(s: Setup) -> None:
    use_cases = builders.identity_use_cases(s.w, max_page_size=3)
    for i in range(4):
        s.w.db.seed_project(f"extra{i}")
    page = await use_cases.list_projects(s.call("ListProjects", s.admin), 0, "", False)
    assert len(page.items) == 3
    assert page.next_page_token


async def test_deactivate_project(s: Setup) -> None:
    s.w.clock.advance(5)
    call = s.call("DeactivateProject", s.admin)
    project = await s.use_cases.deactivate_project(call, s.project.id)
    assert not project.is_active
    assert project.updated_at == s.w.clock.now()
    assert s.w.db.tables.projects[s.project.id] == project
    assert s.audit == [
        _ok(call, project_id=s.project.id, resource_type="project", resource_ids=(s.project.id,))
    ]
    with pytest.raises(NotFound):
        await s.use_cases.deactivate_project(s.call("DeactivateProject", s.admin), 999)


# UpdateProject


async def test_an_owner_changes_the_description_and_export_setting(s: Setup) -> None:
    assert s.project.export_unapproved is False
    s.w.clock.advance(30)
    call = s.call("UpdateProject", s.owner)
    updated = await s.use_cases.update_project(
        call,
        s.project.id,
        ["description", "export_unapproved"],
        description="  Chest CT, 2024 cohort ",
        export_unapproved=True,
    )
    assert (updated.description, updated.export_unapproved) == ("Chest CT, 2024 cohort", True)
    assert (updated.name, updated.is_active) == (s.project.name, True)
    assert updated.updated_at == s.w.clock.now() != s.project.updated_at
    assert s.w.db.tables.projects[s.project.id] == updated
    assert s.audit == [
        _ok(call, project_id=s.project.id, resource_type="project", resource_ids=(s.project.id,))
    ]
    # GetProject and ListProjects answer with the new settings.
    assert await s.use_cases.get_project(s.call("GetProject", s.viewer), s.project.id) == updated
    listed = await s.use_cases.list_projects(s.call("ListProjects", s.viewer), 0, "", False)
    assert listed.items == [updated]


async def test_only_the_masked_fields_change_and_an_empty_description_clears_it(
    s: Setup,
) -> None:
    owner_call = s.call("UpdateProject", s.owner)
    await s.use_cases.update_project(
        owner_call, s.project.id, ["description"], description="kept", export_unapproved=True
    )
    assert s.w.db.tables.projects[s.project.id].export_unapproved is False
    switched = await s.use_cases.update_project(
        s.call("UpdateProject", s.owner),
        s.project.id,
        ["export_unapproved"],
        description="ignored",
        export_unapproved=True,
    )
    assert (switched.description, switched.export_unapproved) == ("kept", True)
    cleared = await s.use_cases.update_project(
        s.call("UpdateProject", s.owner),
        s.project.id,
        ["description"],
        description="   ",
        export_unapproved=False,
    )
    assert (cleared.description, cleared.export_unapproved) == (None, True)


@pytest.mark.parametrize(
    ("paths", "description", "field"),
    [
        ([], "", "update_mask"),
        (["name"], "", "update_mask"),
        (["is_active"], "", "update_mask"),
        (["description", "export_unapproved", "unknown"], "", "update_mask"),
        (["description"], "d" * 2001, "project.description"),
        (["description"], "line\x00break", "project.description"),
    ],
)
async def test_bad_project_updates_name_their_field_before_any_transaction(
    s: Setup, paths: list[str], description: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.update_project(
            s.call("UpdateProject", s.owner),
            s.project.id,
            paths,
            description=description,
            export_unapproved=True,
        )
    assert refused.value.field == field
    assert s.w.db.transactions_opened == 0


async def test_a_description_as_long_as_create_allows_is_accepted(s: Setup) -> None:
    updated = await s.use_cases.update_project(
        s.call("UpdateProject", s.owner),
        s.project.id,
        ["description"],
        description="d" * 2000,
        export_unapproved=False,
    )
    assert updated.description == "d" * 2000


async def test_only_owners_update_a_project_and_outsiders_learn_nothing(s: Setup) -> None:
    reviewer = s.w.db.seed_user("rita")
    s.w.db.seed_member(s.project, reviewer, ProjectRole.REVIEWER)
    for member in (s.annotator, s.viewer, reviewer):
        with pytest.raises(PermissionDenied):
            await s.use_cases.update_project(
                s.call("UpdateProject", member),
                s.project.id,
                ["export_unapproved"],
                description="",
                export_unapproved=True,
            )
    for stranger, project_id in ((s.outsider, s.project.id), (s.owner, 999)):
        with pytest.raises(NotFound, match="project not found"):
            await s.use_cases.update_project(
                s.call("UpdateProject", stranger),
                project_id,
                ["export_unapproved"],
                description="",
                export_unapproved=True,
            )
    assert s.w.db.tables.projects[s.project.id] == s.project
    assert s.audit == []


async def test_a_platform_administrator_updates_a_project_as_its_owner(s: Setup) -> None:
    updated = await s.use_cases.update_project(
        s.call("UpdateProject", s.admin),
        s.project.id,
        ["export_unapproved"],
        description="",
        export_unapproved=True,
    )
    assert updated.export_unapproved is True


async def test_a_deactivated_project_refuses_updates(s: Setup) -> None:
    s.w.db.tables.projects[s.project.id] = replace(s.project, is_active=False)
    with pytest.raises(FailedPrecondition, match="deactivated"):
        await s.use_cases.update_project(
            s.call("UpdateProject", s.owner),
            s.project.id,
            ["export_unapproved"],
            description="",
            export_unapproved=True,
        )
    assert s.w.db.tables.projects[s.project.id].export_unapproved is False
    assert s.audit == []


async def test_a_project_deactivated_after_the_access_check_is_not_changed(
    s: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The access check read the project active; a deactivation committed before the update
    (which the update's row lock waits for) still wins."""

    async def read_before_the_deactivation(
        conn: FakeTx, project_id: int, user_id: int
    ) -> tuple[Project, ProjectRole]:
        return s.project, OWNER

    s.w.db.tables.projects[s.project.id] = replace(s.project, is_active=False)
    # The fake runs one transaction at a time; a stale read stands in for the race.
    monkeypatch.setattr(s.w.projects, "with_role", read_before_the_deactivation)
    with pytest.raises(FailedPrecondition, match="deactivated"):
        await s.use_cases.update_project(
            s.call("UpdateProject", s.owner),
            s.project.id,
            ["export_unapproved"],
            description="",
            export_unapproved=True,
        )
    assert s.w.db.tables.projects[s.project.id].export_unapproved is False
    assert s.audit == []


# Members


async def test_an_owner_adds_a_member_and_the_row_names_the_membership(s: Setup) -> None:
    call = s.call("AddProjectMember", s.owner)
    member = await s.use_cases.add_member(call, s.project.id, s.outsider.id, VIEWER.value)
    assert (member.project_id, member.user_id, member.username, member.role) == (
        s.project.id,
        s.outsider.id,
        "oscar",
        VIEWER,
    )
    assert s.audit == [
        _ok(
            call,
            project_id=s.project.id,
            resource_type="project_member",
            resource_ids=(s.outsider.id,),
        )
    ]


async def test_adding_an_existing_member_changes_the_role_and_keeps_the_date(s: Setup) -> None:
    joined = s.w.db.tables.members[(s.project.id, s.viewer.id)].created_at
    s.w.clock.advance(60)
    member = await s.use_cases.add_member(
        s.call("AddProjectMember", s.owner), s.project.id, s.viewer.id, ANNOTATOR.value
    )
    assert (member.role, member.created_at) == (ANNOTATOR, joined)


async def test_only_owners_add_members_and_outsiders_learn_nothing(s: Setup) -> None:
    with pytest.raises(PermissionDenied):
        await s.use_cases.add_member(
            s.call("AddProjectMember", s.annotator), s.project.id, s.outsider.id, VIEWER.value
        )
    with pytest.raises(NotFound, match="project not found"):
        await s.use_cases.add_member(
            s.call("AddProjectMember", s.outsider), s.project.id, s.outsider.id, OWNER.value
        )
    assert (s.project.id, s.outsider.id) not in s.w.db.tables.members
    assert s.audit == []


async def test_adding_a_missing_user_is_not_found(s: Setup) -> None:
    with pytest.raises(NotFound, match="user not found"):
        await s.use_cases.add_member(
            s.call("AddProjectMember", s.owner), s.project.id, 999, VIEWER.value
        )
    assert s.audit == []


async def test_an_unknown_role_is_refused_by_field(s: Setup) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.add_member(
            s.call("AddProjectMember", s.owner), s.project.id, s.outsider.id, 0
        )
    assert refused.value.field == "role"


async def test_a_deactivated_project_takes_no_new_members(s: Setup) -> None:
    s.w.db.tables.projects[s.project.id] = Project(
        s.project.id, s.project.name, None, False, s.project.created_at, s.project.updated_at
    )
    with pytest.raises(FailedPrecondition):
        await s.use_cases.add_member(
            s.call("AddProjectMember", s.owner), s.project.id, s.outsider.id, VIEWER.value
        )
    assert (s.project.id, s.outsider.id) not in s.w.db.tables.members


async def test_the_last_owner_cannot_step_down_but_one_of_two_can(s: Setup) -> None:
    with pytest.raises(FailedPrecondition, match="at least one owner"):
        await s.use_cases.add_member(
            s.call("AddProjectMember", s.owner), s.project.id, s.owner.id, VIEWER.value
        )
    assert s.w.db.tables.members[(s.project.id, s.owner.id)].role is OWNER
    [refused] = s.w.db.rolled_back
    # The membership was locked before the owners were counted.
    assert refused.locks[0] == ("member", (s.project.id, s.owner.id))

    await s.use_cases.add_member(
        s.call("AddProjectMember", s.owner), s.project.id, s.annotator.id, OWNER.value
    )
    member = await s.use_cases.add_member(
        s.call("AddProjectMember", s.owner), s.project.id, s.owner.id, VIEWER.value
    )
    assert member.role is VIEWER


async def test_list_members_pages_by_user_id_and_binds_tokens_to_the_project(s: Setup) -> None:
    call = s.call("ListProjectMembers", s.viewer)
    first = await s.use_cases.list_members(call, s.project.id, 2, "")
    assert [m.user_id for m in first.items] == [s.owner.id, s.annotator.id]
    assert s.audit[-1] == _ok(
        call,
        project_id=s.project.id,
        resource_type="project_member",
        resource_ids=(s.owner.id, s.annotator.id),
    )
    rest = await s.use_cases.list_members(
        s.call("ListProjectMembers", s.viewer), s.project.id, 2, first.next_page_token
    )
    assert ([m.user_id for m in rest.items], rest.next_page_token) == ([s.viewer.id], "")

    other = s.w.db.seed_project("other")
    s.w.db.seed_member(other, s.viewer, VIEWER)
    with pytest.raises(InvalidArgument) as refused:
        await s.use_cases.list_members(
            s.call("ListProjectMembers", s.viewer), other.id, 2, first.next_page_token
        )
    assert refused.value.field == "page_token"


async def test_list_members_is_for_members(s: Setup) -> None:
    with pytest.raises(NotFound):
        await s.use_cases.list_members(
            s.call("ListProjectMembers", s.outsider), s.project.id, 2, ""
        )


async def test_remove_member(s: Setup) -> None:
    call = s.call("RemoveProjectMember", s.owner)
    await s.use_cases.remove_member(call, s.project.id, s.viewer.id)
    assert (s.project.id, s.viewer.id) not in s.w.db.tables.members
    assert s.audit == [
        _ok(
            call,
            project_id=s.project.id,
            resource_type="project_member",
            resource_ids=(s.viewer.id,),
        )
    ]
    with pytest.raises(NotFound, match="membership not found"):
        await s.use_cases.remove_member(
            s.call("RemoveProjectMember", s.owner), s.project.id, s.viewer.id
        )


async def test_the_last_owner_cannot_be_removed(s: Setup) -> None:
    with pytest.raises(FailedPrecondition):
        await s.use_cases.remove_member(
            s.call("RemoveProjectMember", s.owner), s.project.id, s.owner.id
        )
    assert s.w.db.tables.members[(s.project.id, s.owner.id)].role is OWNER
    # An administrator is no member and cannot leave the project ownerless either.
    with pytest.raises(FailedPrecondition):
        await s.use_cases.remove_member(
            s.call("RemoveProjectMember", s.admin), s.project.id, s.owner.id
        )
    assert s.audit == []


async def test_a_failed_commit_leaves_the_trail_open_for_the_gate(s: Setup) -> None:
    s.w.db.fail_next_commit(Conflict("a concurrent change interfered; retry"))
    call = s.call("RemoveProjectMember", s.owner)
    with pytest.raises(Conflict):
        await s.use_cases.remove_member(call, s.project.id, s.viewer.id)
    # The removal and its row were rolled back together.
    assert (s.project.id, s.viewer.id) in s.w.db.tables.members
    assert s.audit == []
    assert call.audit.written
    assert not call.audit.recorded


async def test_the_trail_closes_once_the_row_is_written(s: Setup) -> None:
    call = s.call("GetProject", s.viewer)
    await s.use_cases.get_project(call, s.project.id)
    with pytest.raises(AuditTrailClosed):
        call.audit.touch(resource_ids=[42])
    assert len(s.audit) == 1


# UserDirectory


def _principal(subject_number: int, username: str, email: str | None = None) -> Principal:
    return Principal(
        subject=f"00000000-0000-4000-8000-{subject_number:012d}", username=username, email=email
    )


async def test_the_directory_creates_a_profile_once_and_answers_from_memory() -> None:
    w = builders.world()
    directory = builders.user_directory(w, ttl_seconds=300)
    alice = _principal(1, "alice", "alice@example.org")
    user_id = await directory.resolve(alice)
    stored = w.db.tables.users[user_id].user
    assert (stored.username, stored.email, stored.keycloak_id) == (
        "alice",
        "alice@example.org",
        alice.subject,
    )
    assert await directory.resolve(alice) == user_id
    assert w.db.transactions_opened == 1
    w.clock.advance(299)
    await directory.resolve(alice)
    assert w.db.transactions_opened == 1
    w.clock.advance(1)
    assert await directory.resolve(alice) == user_id
    assert w.db.transactions_opened == 2
    await directory.resolve(alice, refresh=True)
    assert w.db.transactions_opened == 3
    assert len(w.db.tables.users) == 1


async def test_changed_claims_miss_the_cache_and_update_the_profile() -> None:
    w = builders.world()
    directory = builders.user_directory(w)
    user_id = await directory.resolve(_principal(1, "alice"))
    assert await directory.resolve(_principal(1, "alice.b")) == user_id
    assert w.db.tables.users[user_id].user.username == "alice.b"
    assert w.db.transactions_opened == 2


async def test_the_directory_forgets_its_oldest_principals_first() -> None:
    w = builders.world()
    directory = builders.user_directory(w, max_entries=2)
    for n in (1, 2, 3):
        await directory.resolve(_principal(n, f"user{n}"))
    await directory.resolve(_principal(3, "user3"))
    await directory.resolve(_principal(2, "user2"))
    assert w.db.transactions_opened == 3
    await directory.resolve(_principal(1, "user1"))
    assert w.db.transactions_opened == 4


async def test_a_username_taken_by_another_account_is_refused() -> None:
    w = builders.world()
    directory = builders.user_directory(w)
    await directory.resolve(_principal(1, "alice"))
    with pytest.raises(FailedPrecondition, match="username"):
        await directory.resolve(_principal(2, "alice"))
    assert len(w.db.tables.users) == 1


async def test_a_profile_email_edit_survives_tokens_until_the_claim_changes() -> None:
    w = builders.world()
    directory = builders.user_directory(w)
    use_cases = builders.identity_use_cases(w)
    alice = _principal(1, "alice", "alice@old.org")
    user_id = await directory.resolve(alice)
    me = Caller(alice, user_id, platform_admin=False)
    await use_cases.update_user(
        builders.call("UpdateUser", me), user_id, ["email"], {"email": "a@edited.org"}
    )
    await directory.resolve(alice, refresh=True)
    assert w.db.tables.users[user_id].user.email == "a@edited.org"
    await directory.resolve(_principal(1, "alice", "alice@new.org"))
    assert w.db.tables.users[user_id].user.email == "alice@new.org"


async def test_platform_wide_changes_need_the_administrator_role_even_past_the_gate(
    s: Setup,
) -> None:
    """The gate refuses these calls first; the use cases refuse them too, so no other entry
    point (a job, a future RPC reusing them) can create or deactivate projects without it."""
    with pytest.raises(PermissionDenied):
        await s.use_cases.create_project(s.call("CreateProject", s.owner), "Brain MR", "", "")
    with pytest.raises(PermissionDenied):
        await s.use_cases.deactivate_project(s.call("DeactivateProject", s.owner), s.project.id)
    assert s.w.db.tables.projects[s.project.id].is_active
    assert [p.name for p in s.w.db.tables.projects.values()] == ["chest-ct"]
    assert s.audit == []
