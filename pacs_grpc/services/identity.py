"""Use cases of IdentityService: profiles, projects and memberships."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Generic

from pacs_grpc.domain import paging, validation
from pacs_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from pacs_grpc.domain.identity import Principal, Project, ProjectMember, ProjectRole, User
from pacs_grpc.domain.paging import Page
from pacs_grpc.services.context import (
    AuditedTransactions,
    CallContext,
    authorize_project,
    require_platform_admin,
)
from pacs_grpc.services.idempotency import create_once
from pacs_grpc.services.ports import (
    Clock,
    IdempotencyStore,
    ProjectStore,
    Transactions,
    TxT,
    UserStore,
)

PROFILE_FIELDS = frozenset({"email", "full_name", "organization", "department", "phone"})
_PROFILE_LIMITS = {"full_name": 200, "organization": 200, "department": 200}
PROJECT_FIELDS = frozenset({"description", "export_unapproved"})
_PROJECT_DESCRIPTION_LIMIT = 2000


class UserDirectory(Generic[TxT]):
    """Maps verified principals to local user ids, creating profiles on first sight.

    Profiles follow the token's claims, but writing on every call would turn
    each read into a write: a principal whose claims were seen recently is
    answered from memory. Any change of claims misses the cache and writes.
    """

    def __init__(
        self,
        db: Transactions[TxT],
        users: UserStore[TxT],
        *,
        clock: Clock,
        max_entries: int = 10_000,
        ttl_seconds: float = 300.0,
    ) -> None:
        self._db = db
        self._users = users
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._seen: OrderedDict[tuple[str | None, ...], tuple[int, float]] = OrderedDict()

    async def resolve(self, principal: Principal, *, refresh: bool = False) -> int:
        key = (principal.subject, principal.username, principal.email, principal.full_name)
        cached = self._seen.get(key)
        now = self._clock.monotonic()
        if cached is not None and not refresh and now - cached[1] < self._ttl:
            return cached[0]
        async with self._db.transaction() as conn:
            user = await self._users.upsert_from_claims(conn, principal)
        self._seen[key] = (user.id, now)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_entries:
            self._seen.popitem(last=False)
        return user.id


class IdentityUseCases(Generic[TxT]):
    """Profiles, projects and memberships; every method is one audited transaction."""

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        users: UserStore[TxT],
        projects: ProjectStore[TxT],
        idempotency: IdempotencyStore[TxT],
        *,
        max_page_size: int,
    ) -> None:
        self._transaction = transaction
        self._users = users
        self._projects = projects
        self._idempotency = idempotency
        self._max_page_size = max_page_size

    async def login(self, call: CallContext) -> tuple[User, list[ProjectMember]]:
        """The caller's profile (refreshed from the token by the gate) and memberships."""
        call.audit.touch(resource_ids=[call.caller.user_id])
        async with self._transaction.read(call) as conn:
            user = await self._users.get(conn, call.caller.user_id)
            if user is None:
                raise NotFound("user not found")
            memberships = await self._projects.memberships_of(conn, call.caller.user_id)
        return user, memberships

    async def current_user(self, call: CallContext) -> User:
        call.audit.touch(resource_ids=[call.caller.user_id])
        async with self._transaction.read(call) as conn:
            user = await self._users.get(conn, call.caller.user_id)
            if user is None:
                raise NotFound("user not found")
        return user

    async def update_user(
        self, call: CallContext, user_id: int, paths: list[str], values: Mapping[str, str]
    ) -> User:
        validation.positive_id("user_id", user_id)
        call.audit.touch(resource_ids=[user_id])
        chosen = validation.field_mask("update_mask", paths, PROFILE_FIELDS)
        changes = {path: _profile_value(path, values.get(path, "")) for path in sorted(chosen)}
        if user_id != call.caller.user_id and not call.caller.platform_admin:
            raise PermissionDenied("only the user or a platform administrator may do this")
        async with self._transaction(call) as conn:
            user = await self._users.update(conn, user_id, changes)
            if user is None:
                raise NotFound("user not found")
        return user

    async def create_project(
        self, call: CallContext, name: str, description: str, request_id: str
    ) -> Project:
        require_platform_admin(call)
        clean_name = validation.text("project.name", name, max_length=200, required=True)
        clean_description = _project_description(description)
        key = validation.request_id("request_id", request_id)
        assert clean_name is not None
        fingerprint = paging.filters_fingerprint(clean_name, clean_description)
        async with self._transaction(call) as conn:

            async def find(project_id: int) -> Project | None:
                found = await self._projects.with_role(conn, project_id, call.caller.user_id)
                return found[0] if found else None

            project, _ = await create_once(
                self._idempotency,
                conn,
                call,
                operation="CreateProject",
                request_id=key,
                fingerprint=fingerprint,
                create=lambda: self._projects.create(conn, clean_name, clean_description),
                find=find,
                id_of=lambda p: p.id,
            )
            call.audit.touch(project_id=project.id, resource_ids=[project.id])
        return project

    async def get_project(self, call: CallContext, project_id: int) -> Project:
        validation.positive_id("project_id", project_id)
        call.audit.touch(resource_ids=[project_id])
        async with self._transaction.read(call) as conn:
            project, _ = await authorize_project(self._projects, conn, call, project_id)
        return project

    async def list_projects(
        self, call: CallContext, page_size: int, page_token: str, include_inactive: bool
    ) -> Page[Project]:
        limit = validation.page_size("page_size", page_size, self._max_page_size)
        fingerprint = paging.filters_fingerprint("projects", include_inactive)
        position = paging.decode(page_token, fingerprint, arity=1)
        after_id = int(position[0]) if position else 0
        member_id = None if call.caller.platform_admin else call.caller.user_id
        async with self._transaction.read(call) as conn:
            rows = await self._projects.list_projects(
                conn,
                member_id=member_id,
                after_id=after_id,
                limit=limit + 1,
                include_inactive=include_inactive,
            )
            page = Page.of(rows, limit, fingerprint, lambda p: [p.id])
            call.audit.returned("project", [p.id for p in page.items])
        return page

    async def deactivate_project(self, call: CallContext, project_id: int) -> Project:
        require_platform_admin(call)
        validation.positive_id("project_id", project_id)
        call.audit.touch(resource_ids=[project_id], project_id=project_id)
        async with self._transaction(call) as conn:
            project = await self._projects.deactivate(conn, project_id)
            if project is None:
                raise NotFound("project not found")
        return project

    async def update_project(
        self,
        call: CallContext,
        project_id: int,
        paths: list[str],
        *,
        description: str,
        export_unapproved: bool,
    ) -> Project:
        """Sets the settings named in `paths`; the other values are ignored. Owners only."""
        validation.positive_id("project_id", project_id)
        call.audit.touch(resource_ids=[project_id])
        chosen = validation.field_mask("update_mask", paths, PROJECT_FIELDS)
        changes: dict[str, str | bool | None] = {}
        if "description" in chosen:
            changes["description"] = _project_description(description)
        if "export_unapproved" in chosen:
            changes["export_unapproved"] = export_unapproved
        async with self._transaction(call) as conn:
            await authorize_project(self._projects, conn, call, project_id)
            project = await self._projects.update(conn, project_id, changes)
            if project is None:
                # Projects are never deleted: it was deactivated since authorize_project read it.
                raise FailedPrecondition("the project is deactivated; it accepts no changes")
        return project

    async def add_member(
        self, call: CallContext, project_id: int, user_id: int, role_value: int
    ) -> ProjectMember:
        validation.positive_id("project_id", project_id)
        validation.positive_id("user_id", user_id)
        role = _role("role", role_value)
        call.audit.touch(resource_ids=[user_id])
        async with self._transaction(call) as conn:
            await authorize_project(self._projects, conn, call, project_id)
            current = await self._projects.member_role_for_update(conn, project_id, user_id)
            if current is ProjectRole.OWNER and role is not ProjectRole.OWNER:
                await self._keep_an_owner(conn, project_id, user_id)
            return await self._projects.upsert_member(conn, project_id, user_id, role)

    async def list_members(
        self, call: CallContext, project_id: int, page_size: int, page_token: str
    ) -> Page[ProjectMember]:
        validation.positive_id("project_id", project_id)
        limit = validation.page_size("page_size", page_size, self._max_page_size)
        fingerprint = paging.filters_fingerprint("members", project_id)
        position = paging.decode(page_token, fingerprint, arity=1)
        async with self._transaction.read(call) as conn:
            await authorize_project(self._projects, conn, call, project_id)
            rows = await self._projects.list_members(
                conn, project_id, after_id=int(position[0]) if position else 0, limit=limit + 1
            )
            page = Page.of(rows, limit, fingerprint, lambda m: [m.user_id])
            call.audit.returned("project_member", [m.user_id for m in page.items])
        return page

    async def remove_member(self, call: CallContext, project_id: int, user_id: int) -> None:
        validation.positive_id("project_id", project_id)
        validation.positive_id("user_id", user_id)
        call.audit.touch(resource_ids=[user_id])
        async with self._transaction(call) as conn:
            await authorize_project(self._projects, conn, call, project_id)
            current = await self._projects.member_role_for_update(conn, project_id, user_id)
            if current is None:
                raise NotFound("membership not found")
            if current is ProjectRole.OWNER:
                await self._keep_an_owner(conn, project_id, user_id)
            await self._projects.remove_member(conn, project_id, user_id)

    async def _keep_an_owner(self, conn: TxT, project_id: int, leaving_user_id: int) -> None:
        if await self._projects.other_owner_count(conn, project_id, leaving_user_id) == 0:
            raise FailedPrecondition("a project keeps at least one owner; add another first")


def _profile_value(path: str, value: str) -> str | None:
    field = f"user.{path}"
    if path == "email":
        return validation.email(field, value)
    if path == "phone":
        return validation.phone(field, value)
    return validation.text(field, value, max_length=_PROFILE_LIMITS[path])


def _project_description(value: str) -> str | None:
    return validation.text("project.description", value, max_length=_PROJECT_DESCRIPTION_LIMIT)


def _role(field: str, value: int) -> ProjectRole:
    try:
        return ProjectRole(value)
    except ValueError:
        raise InvalidArgument(field, "must be viewer, annotator, reviewer or owner") from None
