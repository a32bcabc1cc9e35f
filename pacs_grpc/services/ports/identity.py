"""Stores of users, projects, idempotency keys and the audit trail."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pacs_grpc.domain.audit import AuditEntry
from pacs_grpc.domain.identity import Principal, Project, ProjectMember, ProjectRole, User
from pacs_grpc.services.ports.transactions import TxT_contra


class UserStore(Protocol[TxT_contra]):
    """Users as the identity provider's tokens introduce them."""

    async def upsert_from_claims(self, conn: TxT_contra, principal: Principal) -> User:
        """The user of these claims, created on first sight and refreshed after."""
        ...

    async def get(self, conn: TxT_contra, user_id: int) -> User | None: ...
    async def update(
        self, conn: TxT_contra, user_id: int, changes: Mapping[str, str | None]
    ) -> User | None:
        """Sets the listed profile fields (None clears one); None when there is no such user."""
        ...


class ProjectStore(Protocol[TxT_contra]):
    """Projects and their members' roles."""

    async def create(self, conn: TxT_contra, name: str, description: str | None) -> Project: ...
    async def with_role(
        self, conn: TxT_contra, project_id: int, user_id: int
    ) -> tuple[Project, ProjectRole | None] | None:
        """The project and the user's role in it (None: not a member); None: no such project."""
        ...

    async def list_projects(
        self,
        conn: TxT_contra,
        *,
        member_id: int | None,
        after_id: int,
        limit: int,
        include_inactive: bool,
    ) -> list[Project]:
        """Projects by id after `after_id`; only `member_id`'s when given."""
        ...

    async def deactivate(self, conn: TxT_contra, project_id: int) -> Project | None: ...
    async def update(
        self, conn: TxT_contra, project_id: int, changes: Mapping[str, str | bool | None]
    ) -> Project | None:
        """Sets the listed settings (description, export_unapproved; a None description clears
        it); None when there is no such active project, even if it was deactivated meanwhile."""
        ...

    async def upsert_member(
        self, conn: TxT_contra, project_id: int, user_id: int, role: ProjectRole
    ) -> ProjectMember: ...
    async def list_members(
        self, conn: TxT_contra, project_id: int, *, after_id: int, limit: int
    ) -> list[ProjectMember]: ...
    async def memberships_of(self, conn: TxT_contra, user_id: int) -> list[ProjectMember]: ...
    async def member_role_for_update(
        self, conn: TxT_contra, project_id: int, user_id: int
    ) -> ProjectRole | None:
        """The member's role, locked until the transaction ends (None: not a member)."""
        ...

    async def other_owner_count(self, conn: TxT_contra, project_id: int, user_id: int) -> int: ...
    async def remove_member(self, conn: TxT_contra, project_id: int, user_id: int) -> bool: ...


class IdempotencyStore(Protocol[TxT_contra]):
    """What each request_id created, per user and operation."""

    async def lock_and_find(
        self, conn: TxT_contra, user_id: int, operation: str, request_id: str
    ) -> tuple[int, str] | None:
        """The resource id and request fingerprint recorded for this key, if any. The key is
        locked until the transaction ends, so two calls with one key run one after the other."""
        ...

    async def remember(
        self,
        conn: TxT_contra,
        *,
        user_id: int,
        operation: str,
        request_id: str,
        resource_id: int,
        fingerprint: str,
    ) -> None: ...


class AuditStore(Protocol[TxT_contra]):
    """The append-only audit log."""

    async def insert(self, conn: TxT_contra, entry: AuditEntry) -> None: ...
