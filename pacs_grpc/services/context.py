"""What every use case receives about the RPC it serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic

from pacs_grpc.domain.access import Access
from pacs_grpc.domain.audit import AuditTrail
from pacs_grpc.domain.errors import FailedPrecondition, NotFound, PermissionDenied
from pacs_grpc.domain.identity import Caller, Project, ProjectRole
from pacs_grpc.services.ports import AuditStore, ProjectStore, Transactions, TxT


@dataclass(frozen=True)
class CallContext:
    """Who calls, what the RPC requires of them, and the audit row the call will write."""

    caller: Caller
    # From the one RPC table (pacs_grpc.api.access): what this RPC requires.
    access: Access
    audit: AuditTrail


class AuditedTransactions(Generic[TxT]):
    """One block per use case, and its audit row committed before the use case returns.

    A use case that writes runs in one transaction (`__call__`), and its row goes in the same
    transaction, at the end of the block unless the use case wrote it earlier (write_audit). A
    use case that only reads (`read`) runs without a transaction, and its row commits on its
    own after the reads. Either way a block that raises writes nothing, and the edge (the
    access gate) records the refusal instead.
    """

    def __init__(self, db: Transactions[TxT], audit: AuditStore[TxT]) -> None:
        self._db = db
        self._audit = audit

    @asynccontextmanager
    async def __call__(self, call: CallContext) -> AsyncIterator[TxT]:
        async with self._db.transaction() as conn:
            yield conn
            if not call.audit.written:
                await self.write_audit(conn, call)
        call.audit.recorded = True

    @asynccontextmanager
    async def read(self, call: CallContext) -> AsyncIterator[TxT]:
        """For use cases that only read: no transaction, and the audit row commits by itself
        when the block ends (a block that raises writes nothing, as above)."""
        async with self._db.autocommit() as conn:
            yield conn
            if not call.audit.written:
                await self.write_audit(conn, call)
        call.audit.recorded = True

    async def write_audit(self, conn: TxT, call: CallContext) -> None:
        """Write the call's audit row now, e.g. before statements that must come last."""
        await self._audit.insert(conn, call.audit.entry("ok"))
        call.audit.written = True


async def authorize_project(
    projects: ProjectStore[TxT], conn: TxT, call: CallContext, project_id: int
) -> tuple[Project, ProjectRole]:
    """The project, if the caller holds the role the RPC table asks for (see check_access)."""
    call.audit.touch(project_id=project_id)
    found = await projects.with_role(conn, project_id, call.caller.user_id)
    if found is None:
        raise NotFound("project not found")
    project, role = found
    return project, check_access(call, role, project_active=project.is_active, what="project")


def check_access(
    call: CallContext, role: ProjectRole | None, *, project_active: bool, what: str
) -> ProjectRole:
    """The caller's effective role, if it meets what the RPC table asks for.

    `role` is the caller's membership in the resource's project, read in the
    same query as the resource. A caller who may not read the project gets
    NOT_FOUND whether or not the resource exists, so ids cannot be probed; a
    reader lacking the role gets PERMISSION_DENIED. Platform administrators
    act as owners everywhere.
    """
    needed = call.access.project_role
    if needed is None:
        raise RuntimeError(f"{call.audit.action} is not a project-scoped RPC")
    if call.caller.platform_admin:
        role = ProjectRole.OWNER
    if role is None:
        raise NotFound(f"{what} not found")
    if not role.includes(needed):
        raise PermissionDenied(f"this needs {call.access.value}")
    if needed is not ProjectRole.VIEWER and not project_active:
        raise FailedPrecondition("the project is deactivated; it accepts no changes")
    return role


def require_platform_admin(call: CallContext) -> None:
    """Refuse a caller without the platform administrator role.

    The gate refuses such callers already (the RPC table asks for the role); the use cases that
    act platform-wide check again, so no other entry point can reach them without it.
    """
    if not call.caller.platform_admin:
        raise PermissionDenied(f"this needs {Access.PLATFORM_ADMIN.value}")
