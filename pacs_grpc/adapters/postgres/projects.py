"""security_project and security_project_member."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import class_row

from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.domain.errors import AlreadyExists, NotFound
from pacs_grpc.domain.identity import Project, ProjectMember, ProjectRole

_PROJECT_COLUMNS = (
    "p.id, p.name, p.description, p.is_active, p.created_at, p.updated_at, p.export_unapproved"
)

CREATE_PROJECT = f"""
insert into security_project as p (name, description) values (%(name)s, %(description)s)
returning {_PROJECT_COLUMNS}
"""

# The project and the caller's role in it, in one round trip: access checks
# read both together so "not a member" and "no such project" look the same.
PROJECT_WITH_ROLE = f"""
select {_PROJECT_COLUMNS}, m.role
from security_project p
left join security_project_member m on m.project_id = p.id and m.user_id = %(user_id)s
where p.id = %(project_id)s
"""

LIST_ALL_PROJECTS = f"""
select {_PROJECT_COLUMNS} from security_project p
where p.id > %(after_id)s and (p.is_active or %(include_inactive)s)
order by p.id limit %(limit)s
"""

LIST_MEMBER_PROJECTS = f"""
select {_PROJECT_COLUMNS}
from security_project_member m join security_project p on p.id = m.project_id
where m.user_id = %(user_id)s and m.project_id > %(after_id)s
  and (p.is_active or %(include_inactive)s)
order by m.project_id limit %(limit)s
"""

DEACTIVATE_PROJECT = f"""
update security_project p set is_active = false, updated_at = now()
where p.id = %(project_id)s returning {_PROJECT_COLUMNS}
"""

# The columns UpdateProject may set; `update` composes its SET list from these only.
UPDATABLE_PROJECT_COLUMNS = frozenset({"description", "export_unapproved"})

# `is_active` again in the WHERE: an update waiting on a concurrent deactivation's row lock
# re-reads the row and changes nothing once the project is deactivated.
UPDATE_PROJECT = f"""
update security_project p set {{assignments}}, updated_at = now()
where p.id = %(project_id)s and p.is_active returning {_PROJECT_COLUMNS}
"""

_MEMBER_COLUMNS = "m.project_id, m.user_id, u.username, m.role, m.created_at"

UPSERT_MEMBER = """
with upserted as (
    insert into security_project_member as m (project_id, user_id, role)
    values (%(project_id)s, %(user_id)s, %(role)s)
    on conflict (project_id, user_id) do update
        set role = excluded.role, updated_at = now()
    returning m.project_id, m.user_id, m.role, m.created_at
)
select m.project_id, m.user_id, u.username, m.role, m.created_at
from upserted m join security_user u on u.id = m.user_id
"""

LIST_MEMBERS = f"""
select {_MEMBER_COLUMNS}
from security_project_member m join security_user u on u.id = m.user_id
where m.project_id = %(project_id)s and m.user_id > %(after_id)s
order by m.user_id limit %(limit)s
"""

MEMBERSHIPS_OF_USER = f"""
select {_MEMBER_COLUMNS}
from security_project_member m join security_user u on u.id = m.user_id
where m.user_id = %(user_id)s order by m.project_id
"""

MEMBER_ROLE_FOR_UPDATE = """
select role from security_project_member
where project_id = %(project_id)s and user_id = %(user_id)s for update
"""

# Locks the project's owner rows so two concurrent demotions cannot both see
# "another owner remains" and leave the project without one.
OTHER_OWNERS = """
select count(*) from (
    select 1 from security_project_member
    where project_id = %(project_id)s and role = 'owner' and user_id <> %(user_id)s
    for update
) owners
"""

DELETE_MEMBER = """
delete from security_project_member where project_id = %(project_id)s and user_id = %(user_id)s
"""


@dataclass(frozen=True)
class _MemberRow:
    project_id: int
    user_id: int
    username: str
    role: str
    created_at: object

    def to_domain(self) -> ProjectMember:
        return ProjectMember(
            project_id=self.project_id,
            user_id=self.user_id,
            username=self.username,
            role=ProjectRole.from_db(self.role),
            created_at=self.created_at,  # type: ignore[arg-type]
        )


class ProjectRepository:
    """ProjectStore (pacs_grpc.services.ports) on projects and members, in the caller's transaction.

    A project name already used is AlreadyExists (project.name); a member who is no user is
    NotFound. `member_role_for_update` and `other_owner_count` lock rows until the transaction
    ends, so two concurrent demotions cannot leave a project without an owner.
    """

    async def create(self, conn: Connection, name: str, description: str | None) -> Project:
        async with conn.cursor(row_factory=class_row(Project)) as cur:
            try:
                await cur.execute(CREATE_PROJECT, {"name": name, "description": description})
            except pg_errors.UniqueViolation:
                raise AlreadyExists("project.name", "is used by another project") from None
            project = await cur.fetchone()
        assert project is not None
        return project

    async def with_role(
        self, conn: Connection, project_id: int, user_id: int
    ) -> tuple[Project, ProjectRole | None] | None:
        """The project and the user's role in it; None when there is no such project."""
        async with conn.cursor() as cur:
            await cur.execute(PROJECT_WITH_ROLE, {"project_id": project_id, "user_id": user_id})
            row = await cur.fetchone()
        if row is None:
            return None
        *project_fields, role = row
        return Project(*project_fields), (ProjectRole.from_db(role) if role else None)

    async def list_projects(
        self,
        conn: Connection,
        *,
        member_id: int | None,
        after_id: int,
        limit: int,
        include_inactive: bool,
    ) -> list[Project]:
        """Projects by id; only member_id's when given (None lists every project)."""
        query = LIST_ALL_PROJECTS if member_id is None else LIST_MEMBER_PROJECTS
        params = {
            "user_id": member_id,
            "after_id": after_id,
            "limit": limit,
            "include_inactive": include_inactive,
        }
        async with conn.cursor(row_factory=class_row(Project)) as cur:
            await cur.execute(query, params)
            return await cur.fetchall()

    async def deactivate(self, conn: Connection, project_id: int) -> Project | None:
        async with conn.cursor(row_factory=class_row(Project)) as cur:
            await cur.execute(DEACTIVATE_PROJECT, {"project_id": project_id})
            return await cur.fetchone()

    async def update(
        self, conn: Connection, project_id: int, changes: Mapping[str, str | bool | None]
    ) -> Project | None:
        """Set the given columns (a subset of UPDATABLE_PROJECT_COLUMNS); values are parameters.
        None when there is no such active project."""
        columns = sorted(changes)
        if not columns or not set(columns) <= UPDATABLE_PROJECT_COLUMNS:
            raise ValueError(f"not updatable: {set(columns) - UPDATABLE_PROJECT_COLUMNS}")
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in columns
        )
        query = sql.SQL(UPDATE_PROJECT).format(assignments=assignments)
        async with conn.cursor(row_factory=class_row(Project)) as cur:
            await cur.execute(query, {**changes, "project_id": project_id})
            return await cur.fetchone()

    async def upsert_member(
        self, conn: Connection, project_id: int, user_id: int, role: ProjectRole
    ) -> ProjectMember:
        params = {"project_id": project_id, "user_id": user_id, "role": role.db_value}
        async with conn.cursor(row_factory=class_row(_MemberRow)) as cur:
            try:
                await cur.execute(UPSERT_MEMBER, params)
            except pg_errors.ForeignKeyViolation:
                raise NotFound("user not found") from None
            row = await cur.fetchone()
        assert row is not None
        return row.to_domain()

    async def list_members(
        self, conn: Connection, project_id: int, *, after_id: int, limit: int
    ) -> list[ProjectMember]:
        params = {"project_id": project_id, "after_id": after_id, "limit": limit}
        async with conn.cursor(row_factory=class_row(_MemberRow)) as cur:
            await cur.execute(LIST_MEMBERS, params)
            return [row.to_domain() for row in await cur.fetchall()]

    async def memberships_of(self, conn: Connection, user_id: int) -> list[ProjectMember]:
        async with conn.cursor(row_factory=class_row(_MemberRow)) as cur:
            await cur.execute(MEMBERSHIPS_OF_USER, {"user_id": user_id})
            return [row.to_domain() for row in await cur.fetchall()]

    async def member_role_for_update(
        self, conn: Connection, project_id: int, user_id: int
    ) -> ProjectRole | None:
        async with conn.cursor() as cur:
            await cur.execute(
                MEMBER_ROLE_FOR_UPDATE, {"project_id": project_id, "user_id": user_id}
            )
            row = await cur.fetchone()
        return ProjectRole.from_db(row[0]) if row else None

    async def other_owner_count(self, conn: Connection, project_id: int, user_id: int) -> int:
        async with conn.cursor() as cur:
            await cur.execute(OTHER_OWNERS, {"project_id": project_id, "user_id": user_id})
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def remove_member(self, conn: Connection, project_id: int, user_id: int) -> bool:
        async with conn.cursor() as cur:
            await cur.execute(DELETE_MEMBER, {"project_id": project_id, "user_id": user_id})
            return cur.rowcount > 0
