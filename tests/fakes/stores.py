"""In-memory stores with the semantics of the PostgreSQL adapters (pacs_grpc/adapters/postgres).

One FakeDatabase holds every table; each fake store reads and writes it through the open
FakeTx, as the adapters do through a connection. FakeTransactions snapshots the tables when a
transaction opens and restores them when its block raises, so a test can assert that a failed
use case left nothing half-written. Like identity columns, id sequences are not rolled back.

What the adapters' SQL does and these copy: orderings (projects and members by id, annotations
newest first by (created_at, id)), keyset positions, the `limit` the use case asks for (it asks
limit + 1), `now()` as the transaction's start time, unique and foreign keys mapped to the same
domain errors, the member role joined into project and annotation reads, the byte budget of a
list page. Not modelled: concurrency (one transaction at a time; locks are only recorded),
savepoints, CHECK constraints other than the few noted, and jsonb's exact text form (sizes
are those of json.dumps with jsonb's separators).
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pacs_grpc.domain.annotation import (
    Annotation,
    AnnotationAccess,
    AnnotationEvent,
    EventType,
    ListFilter,
)
from pacs_grpc.domain.annotation_rules import AnnotationContent, Location
from pacs_grpc.domain.audit import AuditEntry
from pacs_grpc.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from pacs_grpc.domain.identity import Principal, Project, ProjectMember, ProjectRole, User
from pacs_grpc.domain.paging import BudgetedRows
from tests.fakes.clock import FakeClock

_USER_COLUMNS = frozenset({"email", "full_name", "organization", "department", "phone"})
_ANNOTATION_COLUMNS = frozenset(
    {"annotation_type", "annotation_data", "measurement_values", "viewer_software"}
)


class FakeIntegrityError(Exception):
    """What PostgreSQL would refuse and the adapter does not translate (a server error)."""


@dataclass
class FakeTx:
    """One open transaction: what it wrote, in order, and which rows it locked."""

    number: int
    started_at: datetime
    open: bool = True
    writes: list[str] = field(default_factory=list)
    locks: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class UserRow:
    user: User
    # The e-mail of the last token seen (migration 0002): a profile edit survives tokens
    # that repeat it, a changed claim replaces the stored e-mail.
    claims_email: str | None


@dataclass
class MemberRow:
    role: ProjectRole
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RecordedEvent:
    event_id: int
    project_id: int
    study_uid: str
    annotation_id: int
    event_type: EventType
    occurred_at: datetime


@dataclass
class Tables:
    users: dict[int, UserRow] = field(default_factory=dict)
    projects: dict[int, Project] = field(default_factory=dict)
    members: dict[tuple[int, int], MemberRow] = field(default_factory=dict)
    # (user_id, operation, request_id) -> (resource_id, request fingerprint)
    idempotency: dict[tuple[int, str, str], tuple[int, str]] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    annotations: dict[int, Annotation] = field(default_factory=dict)
    events: list[RecordedEvent] = field(default_factory=list)
    # Object keys of each annotation's masks and pending uploads (the masks are not modelled).
    mask_objects: dict[int, list[str]] = field(default_factory=dict)
    deletion_outbox: list[str] = field(default_factory=list)


class FakeDatabase:
    """The tables, their id sequences, and the transaction currently open."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.tables = Tables()
        self._ids: dict[str, Iterator[int]] = {}
        self.open_tx: FakeTx | None = None
        self.committed: list[FakeTx] = []
        self.rolled_back: list[FakeTx] = []
        self._failures: dict[str, Exception] = {}
        self._commit_failure: Exception | None = None

    def next_id(self, table: str) -> int:
        return next(self._ids.setdefault(table, itertools.count(1)))

    @property
    def transactions_opened(self) -> int:
        return len(self.committed) + len(self.rolled_back) + (self.open_tx is not None)

    def fail_next(self, operation: str, error: Exception) -> None:
        """Make the next call of `operation` (e.g. "annotations.insert") raise `error`."""
        self._failures[operation] = error

    def fail_next_commit(self, error: Exception) -> None:
        """Make the next commit raise `error` (and roll back), as a serialization failure does."""
        self._commit_failure = error

    def enter(self, operation: str, conn: FakeTx) -> FakeTx:
        """Every store call starts here: the handle must be the open transaction."""
        if conn is not self.open_tx or not conn.open:
            raise AssertionError(f"{operation} called outside its open transaction")
        failure = self._failures.pop(operation, None)
        if failure is not None:
            raise failure
        return conn

    def wrote(self, conn: FakeTx, table: str) -> None:
        conn.writes.append(table)

    def take_commit_failure(self) -> Exception | None:
        failure, self._commit_failure = self._commit_failure, None
        return failure

    # Seeding, outside any transaction: the state a test starts from.

    def seed_user(self, username: str, *, email: str | None = None) -> User:
        now = self.clock.now()
        user_id = self.next_id("users")
        user = User(
            id=user_id,
            keycloak_id=str(uuid.UUID(int=user_id)),
            username=username,
            email=email,
            full_name=None,
            organization=None,
            department=None,
            phone=None,
            created_at=now,
            updated_at=now,
        )
        self.tables.users[user_id] = UserRow(user, email)
        return user

    def seed_project(self, name: str, *, active: bool = True) -> Project:
        now = self.clock.now()
        project = Project(self.next_id("projects"), name, None, active, now, now)
        self.tables.projects[project.id] = project
        return project

    def seed_member(self, project: Project, user: User, role: ProjectRole) -> None:
        now = self.clock.now()
        self.tables.members[(project.id, user.id)] = MemberRow(role, now, now)

    def seed_annotation(
        self,
        project: Project,
        user: User,
        *,
        study_uid: str = "1.2.3",
        series_uid: str | None = None,
        annotation_type: str = "point",
        data: dict[str, Any] | None = None,
        measurements: Any = None,
    ) -> Annotation:
        now = self.clock.now()
        annotation = Annotation(
            id=self.next_id("annotations"),
            project_id=project.id,
            user_id=user.id,
            study_uid=study_uid,
            series_uid=series_uid,
            instance_uid=None,
            annotation_type=annotation_type,
            annotation_data=data if data is not None else {"x": 1},
            measurement_values=measurements,
            viewer_software=None,
            row_version=1,
            created_at=now,
            updated_at=now,
        )
        self.tables.annotations[annotation.id] = annotation
        return annotation


class FakeTransactions:
    """transaction(): a FakeTx; the tables as they were when the block raises."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTx]:
        db = self._db
        if db.open_tx is not None:
            raise RuntimeError("the fake database runs one transaction at a time")
        tx = FakeTx(number=db.transactions_opened + 1, started_at=db.clock.now())
        snapshot = copy.deepcopy(db.tables)
        db.open_tx = tx
        try:
            yield tx
            failure = db.take_commit_failure()
            if failure is not None:
                raise failure
        except BaseException:
            db.tables = snapshot
            db.rolled_back.append(tx)
            raise
        else:
            db.committed.append(tx)
        finally:
            tx.open = False
            db.open_tx = None


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
            self._db.next_id("projects"), name, description, True, tx.started_at, tx.started_at
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


class FakeAnnotationStore:
    """annotation_annotation (adapters/postgres/annotations.py)."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def insert(
        self,
        conn: FakeTx,
        *,
        project_id: int,
        user_id: int,
        where: Location,
        content: AnnotationContent,
    ) -> Annotation:
        tx = self._db.enter("annotations.insert", conn)
        tables = self._db.tables
        if project_id not in tables.projects or user_id not in tables.users:
            raise FakeIntegrityError("insert violates a foreign key of annotation_annotation")
        if where.instance_uid is not None and where.series_uid is None:
            raise FakeIntegrityError("violates annotation_annotation_instance_needs_series")
        annotation = Annotation(
            id=self._db.next_id("annotations"),
            project_id=project_id,
            user_id=user_id,
            study_uid=where.study_uid,
            series_uid=where.series_uid,
            instance_uid=where.instance_uid,
            annotation_type=content.annotation_type,
            annotation_data=copy.deepcopy(content.annotation_data),
            measurement_values=copy.deepcopy(content.measurement_values),
            viewer_software=content.viewer_software,
            row_version=1,
            created_at=tx.started_at,
            updated_at=tx.started_at,
        )
        tables.annotations[annotation.id] = annotation
        self._db.wrote(tx, "annotations")
        return annotation

    async def get_with_access(
        self, conn: FakeTx, annotation_id: int, user_id: int, *, for_update: bool = False
    ) -> AnnotationAccess | None:
        tx = self._db.enter("annotations.get_with_access", conn)
        tables = self._db.tables
        annotation = tables.annotations.get(annotation_id)
        if annotation is None:
            return None
        if for_update:
            tx.locks.append(("annotation", annotation_id))
        project = tables.projects.get(annotation.project_id)
        if project is None:
            return None
        member = tables.members.get((annotation.project_id, user_id))
        return AnnotationAccess(annotation, member.role if member else None, project.is_active)

    async def update(
        self, conn: FakeTx, annotation_id: int, changes: Mapping[str, Any]
    ) -> Annotation:
        tx = self._db.enter("annotations.update", conn)
        if not changes or not set(changes) <= _ANNOTATION_COLUMNS:
            raise ValueError(f"not updatable: {set(changes) - _ANNOTATION_COLUMNS}")
        current = self._db.tables.annotations.get(annotation_id)
        assert current is not None  # the adapter asserts that the row came back
        updated = replace(
            current,
            **copy.deepcopy(dict(changes)),
            row_version=current.row_version + 1,
            updated_at=tx.started_at,
        )
        self._db.tables.annotations[annotation_id] = updated
        self._db.wrote(tx, "annotations")
        return updated

    async def delete(self, conn: FakeTx, annotation_id: int) -> int:
        tx = self._db.enter("annotations.delete", conn)
        tables = self._db.tables
        # The masks' objects go to the outbox first; the masks go with the annotation.
        queued = tables.mask_objects.pop(annotation_id, [])
        tables.deletion_outbox.extend(queued)
        if tables.annotations.pop(annotation_id, None) is not None:
            self._db.wrote(tx, "annotations")
        return len(queued)

    async def list_page(
        self,
        conn: FakeTx,
        filters: ListFilter,
        *,
        after: tuple[datetime, int] | None,
        limit: int,
        budget_bytes: int,
    ) -> BudgetedRows[Annotation]:
        self._db.enter("annotations.list_page", conn)
        matching = sorted(
            (a for a in self._db.tables.annotations.values() if _matches(a, filters, after)),
            key=lambda a: (a.created_at, a.id),
            reverse=True,
        )[:limit]
        # A row's JSON is read while the rows before it stayed within the budget; the rows
        # past it only say that more follow.
        within: list[Annotation] = []
        before_bytes = 0
        for annotation in matching:
            if before_bytes >= budget_bytes:
                break
            within.append(annotation)
            before_bytes += json_bytes(annotation)
        return BudgetedRows(within, cut=len(within) < len(matching))


def _matches(a: Annotation, f: ListFilter, after: tuple[datetime, int] | None) -> bool:
    equal = {
        "study_uid": a.study_uid,
        "series_uid": a.series_uid,
        "instance_uid": a.instance_uid,
        "annotation_type": a.annotation_type,
        "user_id": a.user_id,
    }
    return (
        (f.project_ids is None or a.project_id in f.project_ids)
        and all(getattr(f, name) in (None, value) for name, value in equal.items())
        and (f.created_after is None or a.created_at >= f.created_after)
        and (f.created_before is None or a.created_at < f.created_before)
        and (after is None or (a.created_at, a.id) < after)
    )


def json_bytes(annotation: Annotation) -> int:
    """The generated column json_bytes (migration 0006), with jsonb's separators."""

    def size(value: Any) -> int:
        return len(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode())

    measurements = annotation.measurement_values
    return size(annotation.annotation_data) + (0 if measurements is None else size(measurements))


class FakeEventRecorder:
    """record_event: appends to annotation_event; must be the transaction's last write."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def __call__(
        self,
        conn: FakeTx,
        *,
        project_id: int,
        study_uid: str,
        annotation_id: int,
        event_type: EventType,
    ) -> int:
        tx = self._db.enter("events.record", conn)
        event = RecordedEvent(
            self._db.next_id("events"),
            project_id,
            study_uid,
            annotation_id,
            event_type,
            tx.started_at,
        )
        self._db.tables.events.append(event)
        tx.locks.append(("project_feed", project_id))
        self._db.wrote(tx, "events")
        return event.event_id


@dataclass(frozen=True)
class Subscription:
    project_id: int
    study_uid: str | None
    after_event_id: int


class FakeEventSource:
    """subscribe(): the project's recorded events after the resume point, each with its
    annotation as it is now (None once deleted), then the end of the stream. Events recorded
    after subscribing are not delivered: the live feed is not modelled."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        self.subscriptions: list[Subscription] = []
        self.open_subscriptions = 0

    @asynccontextmanager
    async def subscribe(
        self, project_id: int, *, study_uid: str | None, after_event_id: int
    ) -> AsyncIterator[AsyncIterator[AnnotationEvent]]:
        self.subscriptions.append(Subscription(project_id, study_uid, after_event_id))
        annotations = self._db.tables.annotations
        events = [
            AnnotationEvent(
                event_id=e.event_id,
                project_id=e.project_id,
                study_uid=e.study_uid,
                annotation_id=e.annotation_id,
                event_type=e.event_type,
                occurred_at=e.occurred_at,
                annotation=_same_project(annotations.get(e.annotation_id), e.project_id),
            )
            for e in self._db.tables.events
            if e.project_id == project_id
            and e.event_id > after_event_id
            and study_uid in (None, e.study_uid)
        ]
        self.open_subscriptions += 1
        try:
            yield _iterate(events)
        finally:
            self.open_subscriptions -= 1


def _same_project(annotation: Annotation | None, project_id: int) -> Annotation | None:
    return annotation if annotation is not None and annotation.project_id == project_id else None


async def _iterate(events: list[AnnotationEvent]) -> AsyncIterator[AnnotationEvent]:
    for event in events:
        yield event
