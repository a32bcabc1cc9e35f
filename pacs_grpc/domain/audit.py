"""The audit trail of one RPC: who did what to which resources, and how it ended."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["ok", "denied", "error"]


@dataclass(frozen=True)
class AuditEntry:
    """One audit_log row, as AuditTrail.entry builds it: `action` the RPC's method name, `subject`
    and `client_id` the token's `sub` and `azp`, what it touched, and `outcome` ("ok", "denied",
    "error") with the gRPC status name in `error_code` when not ok.
    """

    action: str
    outcome: Outcome
    subject: str | None
    client_id: str | None
    request_id: str | None
    project_id: int | None = None
    resource_type: str | None = None
    resource_ids: tuple[int, ...] = ()
    study_uid: str | None = None
    error_code: str | None = None


class AuditTrailClosed(RuntimeError):
    """A use case recorded something after its audit row was written: a bug, not bad input."""


@dataclass
class AuditTrail:
    """Filled in while an RPC runs; becomes exactly one AuditEntry.

    A successful use case records its entry inside its own transaction, so
    the data access and its audit row commit together. Anything that ends the
    call otherwise (denied, failed) is recorded at the edge; `recorded` keeps
    the two from writing twice.

    Once the row is written the trail is closed: `touch` and `returned` then
    raise AuditTrailClosed, so ids gathered after the row went out cannot be
    dropped silently. Record what a call returns inside its audited block.
    """

    action: str
    subject: str | None
    client_id: str | None
    request_id: str | None
    project_id: int | None = None
    resource_type: str | None = None
    resource_ids: list[int] = field(default_factory=list)
    study_uid: str | None = None
    # Inserted in the use case's transaction, which has not committed yet.
    written: bool = False
    # Committed: nobody writes another row for this call.
    recorded: bool = False

    def touch(
        self,
        *,
        project_id: int | None = None,
        resource_type: str | None = None,
        resource_ids: Iterable[int] = (),
        study_uid: str | None = None,
    ) -> None:
        """Add what the call has learnt so far; repeated ids are kept once."""
        self._check_open()
        if project_id is not None:
            self.project_id = project_id
        if resource_type is not None:
            self.resource_type = resource_type
        for resource_id in resource_ids:
            if resource_id not in self.resource_ids:
                self.resource_ids.append(resource_id)
        if study_uid is not None:
            self.study_uid = study_uid

    def returned(self, resource_type: str, resource_ids: Iterable[int]) -> None:
        """What the call answered with or changed (a list: the ids on the page).

        Replaces the type and ids touched on the way there, such as the group
        whose masks a call lists; project and study stay.
        """
        self._check_open()
        self.resource_type = resource_type
        self.resource_ids = list(dict.fromkeys(resource_ids))

    def _check_open(self) -> None:
        if self.written or self.recorded:
            raise AuditTrailClosed(
                f"{self.action}: the audit row is already written; record ids inside the "
                "audited transaction"
            )

    def entry(self, outcome: Outcome, error_code: str | None = None) -> AuditEntry:
        return AuditEntry(
            action=self.action,
            outcome=outcome,
            subject=self.subject,
            client_id=self.client_id,
            request_id=self.request_id,
            project_id=self.project_id,
            resource_type=self.resource_type,
            resource_ids=tuple(self.resource_ids),
            study_uid=self.study_uid,
            error_code=error_code,
        )
