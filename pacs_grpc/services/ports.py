"""What the use cases need from the outside world, as protocols.

The PostgreSQL adapters implement these; unit tests can use fakes. A
transaction handle is opaque here: use cases only pass it on.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from pacs_grpc.domain.audit import AuditEntry
from pacs_grpc.domain.identity import Principal, Project, ProjectMember, ProjectRole, User
from pacs_grpc.domain.pacs import SourceSeries

Tx = Any


class Transactions(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...


class UserStore(Protocol):
    async def upsert_from_claims(self, conn: Tx, principal: Principal) -> User: ...
    async def get(self, conn: Tx, user_id: int) -> User | None: ...
    async def update(
        self, conn: Tx, user_id: int, changes: Mapping[str, str | None]
    ) -> User | None: ...


class ProjectStore(Protocol):
    async def create(self, conn: Tx, name: str, description: str | None) -> Project: ...
    async def with_role(
        self, conn: Tx, project_id: int, user_id: int
    ) -> tuple[Project, ProjectRole | None] | None: ...
    async def list_projects(
        self,
        conn: Tx,
        *,
        member_id: int | None,
        after_id: int,
        limit: int,
        include_inactive: bool,
    ) -> list[Project]: ...
    async def deactivate(self, conn: Tx, project_id: int) -> Project | None: ...
    async def upsert_member(
        self, conn: Tx, project_id: int, user_id: int, role: ProjectRole
    ) -> ProjectMember: ...
    async def list_members(
        self, conn: Tx, project_id: int, *, after_id: int, limit: int
    ) -> list[ProjectMember]: ...
    async def memberships_of(self, conn: Tx, user_id: int) -> list[ProjectMember]: ...
    async def member_role_for_update(
        self, conn: Tx, project_id: int, user_id: int
    ) -> ProjectRole | None: ...
    async def other_owner_count(self, conn: Tx, project_id: int, user_id: int) -> int: ...
    async def remove_member(self, conn: Tx, project_id: int, user_id: int) -> bool: ...


class IdempotencyStore(Protocol):
    async def lock_and_find(
        self, conn: Tx, user_id: int, operation: str, request_id: str
    ) -> tuple[int, str] | None: ...
    async def remember(
        self,
        conn: Tx,
        *,
        user_id: int,
        operation: str,
        request_id: str,
        resource_id: int,
        fingerprint: str,
    ) -> None: ...


class AuditStore(Protocol):
    async def insert(self, conn: Tx, entry: AuditEntry) -> None: ...


class Pacs(Protocol):
    """The hospital's PACS over DICOMweb (pacs_grpc.adapters.pacs).

    Every method raises Unavailable when the PACS cannot be reached or answers with a
    server error, so callers can tell "not there" (False / None) from "cannot tell".
    """

    async def study_exists(self, study_uid: str) -> bool: ...
    async def series_exists(self, study_uid: str, series_uid: str) -> bool: ...
    async def instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool: ...
    async def source_series(
        self, study_uid: str, series_uid: str, *, fresh: bool = False
    ) -> SourceSeries | None:
        """The series' instances (no pixel data), or None when the PACS has no such series.

        A series found is remembered for a while; `fresh` asks the PACS again, for when a
        slice names an image the remembered answer lacks (the series may still be arriving).
        """
        ...

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        """WADO-RS metadata of every instance, as DICOM JSON, for building a Segmentation."""
        ...

    async def retrieve_instance(
        self, study_uid: str, series_uid: str, sop_uid: str, *, max_bytes: int
    ) -> bytes | None:
        """WADO-RS of one instance: its DICOM Part-10 file, or None when the PACS has no such
        instance. More than `max_bytes` raises ResourceExhausted, read no further."""
        ...

    async def store(self, parts: list[bytes]) -> list[str]:
        """STOW-RS of DICOM Part-10 files; the SOP Instance UIDs the PACS refused."""
        ...
