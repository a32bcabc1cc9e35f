"""In-memory users, projects and members, idempotency keys and the audit log, with the
semantics of pacs_grpc/adapters/postgres/users.py, projects.py, idempotency.py and audit.py.

The rows live in the FakeDatabase's Tables (tests/fakes/database.py). What the adapters' SQL
does and these copy: orderings (projects and members by id), keyset positions, the `limit` the
use case asks for (it asks limit + 1), `now()` as the transaction's start time, unique and
foreign keys mapped to the same domain errors, the member role joined into project reads.
Not modelled: concurrency (one transaction at a time; locks are only recorded), savepoints,
CHECK constraints (only keycloak_id's uuid cast is kept, as a server error).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pacs_grpc.domain.audit import AuditEntry
from pacs_grpc.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from pacs_grpc.domain.identity import Principal, Project, ProjectMember, ProjectRole, User
from tests.fakes.database import FakeDatabase, FakeIntegrityError, FakeTx, MemberRow, UserRow

_USER_COLUMNS = frozenset({"email", "full_name", "organization", "department", "phone"})
_PROJECT_COLUMNS = frozenset({"description", "export_unapproved"})


class FakeUserStore:
    """security_user, as pacs_grpc.adapters.postgres.users.UserRepository writes it."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def upsert_from_claims(self, conn: FakeTx, principal: Principal) -> User:
        tx = self._db.enter("users.upsert_from_claims", conn)
        # keycloak_id is a uuid column: anything else fails the cast, a server error.
        keycloak_id = str(uuid.UUID(principal.subject))
        try:
            return self._upsert(tx, keycloak_id, principal, principal.email)
        except _EmailTaken:
            # The adapter's second try: without the e-mail (as claim too) rather than refuse.
            return self._upsert(tx, keycloak_id, principal, None)

    def _upsert(
        self, tx: FakeTx, keycloak_id: str, principal: Principal, email: str | None
    ) -> User:
        rows = self._db.tables.users
        # INSERT ... ON CONFLICT draws from the identity sequence even when it updates.
        drawn_id = self._db.next_id("users")
        existing = next((r for r in rows.values() if r.user.keycloak_id == keycloak_id), None)
        own_id = existing.user.id if existing else None
        if any(
            r.user.username == principal.username and r.user.id != own_id for r in rows.values()
        ):
            raise FailedPrecondition(
                "another account already uses this username; ask an administrator"
            )
        if existing is None:
            _check_email_free(rows, email, own_id=None, error=_EmailTaken())
            user = User(
                id=drawn_id,
                keycloak_id=keycloak_id,
                username=principal.username,
                email=email,
                full_name=principal.full_name,
                organization=None,
                department=None,
                phone=None,
                created_at=tx.started_at,
                updated_at=tx.started_at,
            )
        else:
            old = existing.user
            claim_changed = existing.claims_email != email
            new_email = email if claim_changed else old.email
            _check_email_free(rows, new_email, own_id=old.id, error=_EmailTaken())
            changed = (old.username, existing.claims_email) != (principal.username, email)
            user = replace(
                old,
                username=principal.username,
                email=new_email,
                full_name=old.full_name if old.full_name is not None else principal.full_name,
                updated_at=tx.started_at if changed else old.updated_at,
            )
        rows[user.id] = UserRow(user, email)
        self._db.wrote(tx, "users")
        return user

    async def get(self, conn: FakeTx, user_id: int) -> User | None:
        self._db.enter("users.get", conn)
        row = self._db.tables.users.get(user_id)
        return row.user if row else None

    async def update(
        self, conn: FakeTx, user_id: int, changes: Mapping[str, str | None]
    ) -> User | None:
        tx = self._db.enter("users.update", conn)
        if not changes or not set(changes) <= _USER_COLUMNS:
            raise ValueError(f"not updatable: {set(changes) - _USER_COLUMNS}")
        rows = self._db.tables.users
        row = rows.get(user_id)
        if row is None:
            return None
        if "email" in changes:
            error = AlreadyExists("user.email", "is used by another account")
            _check_email_free(rows, changes["email"], own_id=user_id, error=error)
        columns: dict[str, Any] = dict(changes)
        row.user = replace(row.user, **columns, updated_at=tx.started_at)
        self._db.wrote(tx, "users")
        return row.user


class _EmailTaken(Exception):
    pass


def _check_email_free(
    rows: Mapping[int, UserRow], email: str | None, *, own_id: int | None, error: Exception
) -> None:
    # security_user_email_lower_key: unique on lower(email); NULLs stay distinct.
    if email is None:
        return
    for row in rows.values():
        other = row.user.email
        if row.user.id != own_id and other is not None and other.lower() == email.lower():
            raise error


class FakeProjectStore:
    """security_project and security_project_member (adapters/postgres/projects.py)."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def create(self, conn: FakeTx, name: str, description: str | None) -> Project:
        tx = self._db.enter("projects.create", conn)
        projects = self._db.tables.projects
        if any(p.name == name for p in projects.values()):
            raise AlreadyExists("project.name", "is used by another project")
        project = Project(
            self._db.next_id("projects"),
            name,
            description,
            True,
            tx.started_at,
            tx.started_at,
            export_unapproved=False,  # the column's default
        )
        projects[project.id] = project
        self._db.wrote(tx, "projects")
        return project

    async def with_role(
        self, conn: FakeTx, project_id: int, user_id: int
    ) -> tuple[Project, ProjectRole | None] | None:
        self._db.enter("projects.with_role", conn)
        project = self._db.tables.projects.get(project_id)
        if project is None:
            return None
        member = self._db.tables.members.get((project_id, user_id))
        return project, (member.role if member else None)

    async def list_projects(
        self,
        conn: FakeTx,
        *,
        member_id: int | None,
        after_id: int,
        limit: int,
        include_inactive: bool,
    ) -> list[Project]:
        self._db.enter("projects.list_projects", conn)
        tables = self._db.tables
        found = [
            p
            for p in tables.projects.values()
            if p.id > after_id
            and (p.is_active or include_inactive)
            and (member_id is None or (p.id, member_id) in tables.members)
        ]
        return sorted(found, key=lambda p: p.id)[:limit]

    async def deactivate(self, conn: FakeTx, project_id: int) -> Project | None:
        tx = self._db.enter("projects.deactivate", conn)
        projects = self._db.tables.projects
        if project_id not in projects:
            return None
        project = replace(projects[project_id], is_active=False, updated_at=tx.started_at)
        projects[project_id] = project
        self._db.wrote(tx, "projects")
        return project

    async def update(
        self, conn: FakeTx, project_id: int, changes: Mapping[str, str | bool | None]
    ) -> Project | None:
        tx = self._db.enter("projects.update", conn)
        if not changes or not set(changes) <= _PROJECT_COLUMNS:
            raise ValueError(f"not updatable: {set(changes) - _PROJECT_COLUMNS}")
        projects = self._db.tables.projects
        found = projects.get(project_id)
        # `where p.id = ... and p.is_active`: a deactivated project is left as it is.
        if found is None or not found.is_active:
            return None
        columns: dict[str, Any] = dict(changes)
        project = replace(found, **columns, updated_at=tx.started_at)
        projects[project_id] = project
        self._db.wrote(tx, "projects")
        return project

    async def upsert_member(
        self, conn: FakeTx, project_id: int, user_id: int, role: ProjectRole
    ) -> ProjectMember:
        tx = self._db.enter("projects.upsert_member", conn)
        tables = self._db.tables
        if user_id not in tables.users or project_id not in tables.projects:
            # Either foreign key; the adapter reads both as a missing user.
            raise NotFound("user not found")
        key = (project_id, user_id)
        existing = tables.members.get(key)
        created_at = existing.created_at if existing else tx.started_at
        tables.members[key] = MemberRow(role, created_at, tx.started_at)
        self._db.wrote(tx, "members")
        return self._member(project_id, user_id)

    async def list_members(
        self, conn: FakeTx, project_id: int, *, after_id: int, limit: int
    ) -> list[ProjectMember]:
        self._db.enter("projects.list_members", conn)
        user_ids = sorted(
            u for (p, u) in self._db.tables.members if p == project_id and u > after_id
        )
        return [self._member(project_id, u) for u in user_ids[:limit]]

    async def memberships_of(self, conn: FakeTx, user_id: int) -> list[ProjectMember]:
        self._db.enter("projects.memberships_of", conn)
        # No join to security_project: memberships of deactivated projects are listed too.
        project_ids = sorted(p for (p, u) in self._db.tables.members if u == user_id)
        return [self._member(p, user_id) for p in project_ids]

    async def member_role_for_update(
        self, conn: FakeTx, project_id: int, user_id: int
    ) -> ProjectRole | None:
        tx = self._db.enter("projects.member_role_for_update", conn)
        member = self._db.tables.members.get((project_id, user_id))
        if member is None:
            return None
        tx.locks.append(("member", (project_id, user_id)))
        return member.role

    async def other_owner_count(self, conn: FakeTx, project_id: int, user_id: int) -> int:
        tx = self._db.enter("projects.other_owner_count", conn)
        owners = [
            key
            for key, member in self._db.tables.members.items()
            if key[0] == project_id and key[1] != user_id and member.role is ProjectRole.OWNER
        ]
        tx.locks.extend(("member", key) for key in owners)
        return len(owners)

    async def remove_member(self, conn: FakeTx, project_id: int, user_id: int) -> bool:
        tx = self._db.enter("projects.remove_member", conn)
        removed = self._db.tables.members.pop((project_id, user_id), None)
        if removed is not None:
            self._db.wrote(tx, "members")
        return removed is not None

    def _member(self, project_id: int, user_id: int) -> ProjectMember:
        tables = self._db.tables
        row = tables.members[(project_id, user_id)]
        username = tables.users[user_id].user.username
        return ProjectMember(project_id, user_id, username, row.role, row.created_at)


class FakeIdempotencyStore:
    """idempotency_key: primary key (user_id, operation, request_id)."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def lock_and_find(
        self, conn: FakeTx, user_id: int, operation: str, request_id: str
    ) -> tuple[int, str] | None:
        tx = self._db.enter("idempotency.lock_and_find", conn)
        key = (user_id, operation, request_id)
        tx.locks.append(("idempotency", key))
        return self._db.tables.idempotency.get(key)

    async def remember(
        self,
        conn: FakeTx,
        *,
        user_id: int,
        operation: str,
        request_id: str,
        resource_id: int,
        fingerprint: str,
    ) -> None:
        tx = self._db.enter("idempotency.remember", conn)
        key = (user_id, operation, request_id)
        if key in self._db.tables.idempotency:
            raise FakeIntegrityError("duplicate key value violates idempotency_key_pkey")
        self._db.tables.idempotency[key] = (resource_id, fingerprint)
        self._db.wrote(tx, "idempotency")


class FakeAuditStore:
    """audit_log: appended to, never changed."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def insert(self, conn: FakeTx, entry: AuditEntry) -> None:
        tx = self._db.enter("audit.insert", conn)
        self._db.tables.audit.append(entry)
        self._db.wrote(tx, "audit")

    @property
    def rows(self) -> list[AuditEntry]:
        return list(self._db.tables.audit)
