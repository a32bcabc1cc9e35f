"""One in-memory database for the store fakes, with the transactions of the PostgreSQL adapters.

FakeDatabase holds every table (Tables, and the mask tables tests/fakes/masks.py adds) and
their id sequences; each fake store
(tests/fakes/identity.py, annotations.py, masks.py, outbox.py) reads and writes it through the
open FakeTx, as the adapters do through a connection. FakeTransactions snapshots the tables
when a transaction opens and restores them when its block raises, so a test can assert that a
failed use case left nothing half-written. Like identity columns, id sequences are not rolled
back. A transaction's start time is the `now()` its stores write. fail_next and
fail_next_commit inject faults; the seed_* helpers write the state a test starts from, outside
any transaction.

Not modelled: concurrency (one transaction at a time; locks are only recorded), savepoints.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pacs_grpc.domain.annotation import Annotation, AnnotationRevision, EventType
from pacs_grpc.domain.audit import AuditEntry
from pacs_grpc.domain.identity import Project, ProjectRole, User
from tests.fakes.clock import FakeClock


class FakeIntegrityError(Exception):
    """What PostgreSQL would refuse and the adapter does not translate (a server error)."""


@dataclass
class FakeTx:
    """One open transaction: what it wrote, in order, and which rows it locked."""

    number: int
    started_at: datetime
    open: bool = True
    # Opened by autocommit(): each write committed as it was made.
    autocommit: bool = False
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
    mask_group_id: int | None = None


@dataclass
class Tables:
    users: dict[int, UserRow] = field(default_factory=dict)
    projects: dict[int, Project] = field(default_factory=dict)
    members: dict[tuple[int, int], MemberRow] = field(default_factory=dict)
    # (user_id, operation, request_id) -> (resource_id, request fingerprint)
    idempotency: dict[tuple[int, str, str], tuple[int, str]] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    annotations: dict[int, Annotation] = field(default_factory=dict)
    # annotation_revision: per annotation, oldest first, each with the annotation it left.
    revisions: dict[int, list[tuple[AnnotationRevision, Annotation]]] = field(default_factory=dict)
    events: list[RecordedEvent] = field(default_factory=list)


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
        if conn.autocommit and table != "audit":
            # Only a read's audit row may commit on its own; data changes need a transaction.
            raise AssertionError(f"{table} written outside a transaction")
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
    """transaction(): a FakeTx; the tables as they were when the block raises. autocommit():
    a FakeTx whose writes stay."""

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

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[FakeTx]:
        """Every write stays, whatever the block raises: nothing is rolled back."""
        db = self._db
        if db.open_tx is not None:
            raise RuntimeError("the fake database runs one transaction at a time")
        tx = FakeTx(number=db.transactions_opened + 1, started_at=db.clock.now(), autocommit=True)
        db.open_tx = tx
        try:
            yield tx
        finally:
            db.committed.append(tx)
            tx.open = False
            db.open_tx = None
