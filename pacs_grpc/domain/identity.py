"""Who is calling, and what project roles mean."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Principal:
    """The verified caller, as the access token describes them.

    AI pipelines authenticate with Keycloak client-credentials tokens and are
    principals like any person: their `subject` is the service account's id.
    """

    subject: str  # the token's `sub`: the Keycloak user id, a UUID
    username: str  # `preferred_username`
    email: str | None = None
    full_name: str | None = None  # `name`
    client_id: str | None = None  # `azp`: the Keycloak client the token was issued to
    realm_roles: frozenset[str] = frozenset()
    # `resource_access.<client>.roles`, by client id.
    client_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Epoch seconds from which the verifier refuses the token (its `exp` plus the clock
    # skew it allows): what a long call, such as a watch stream, must not outlive.
    valid_until: float | None = None


class ProjectRole(enum.Enum):
    """A member's role in a project; the value is the contract's ProjectRole number.

    Not an order: annotators write and reviewers review, and neither may do the other's part.
    `includes` says whether a role may do what another may; owners may do everything.
    """

    VIEWER = 1  # read annotations and masks
    ANNOTATOR = 2  # also create, change, delete and submit them for review
    OWNER = 3  # also manage the project's members and settings, and review
    REVIEWER = 4  # read, and approve or reject what was submitted; no writes

    def includes(self, needed: ProjectRole) -> bool:
        """Whether this role may do what `needed` may."""
        return needed in _INCLUDED[self]

    @property
    def db_value(self) -> str:
        return self.name.lower()

    @classmethod
    def from_db(cls, value: str) -> ProjectRole:
        return cls[value.upper()]


_INCLUDED = {
    ProjectRole.VIEWER: frozenset({ProjectRole.VIEWER}),
    ProjectRole.ANNOTATOR: frozenset({ProjectRole.VIEWER, ProjectRole.ANNOTATOR}),
    ProjectRole.REVIEWER: frozenset({ProjectRole.VIEWER, ProjectRole.REVIEWER}),
    ProjectRole.OWNER: frozenset(ProjectRole),
}


@dataclass(frozen=True)
class Caller:
    """A verified principal with its local user id, for one RPC."""

    principal: Principal
    user_id: int
    platform_admin: bool


@dataclass(frozen=True)
class User:
    """A local profile, created from token claims on first sight. `id` is ours (positive);
    `keycloak_id` is the token's `sub`. Times are timezone-aware, from the database.
    """

    id: int
    keycloak_id: str
    username: str
    email: str | None
    full_name: str | None
    organization: str | None
    department: str | None
    phone: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Project:
    """The unit of access: members hold roles in it. `name` is unique; a deactivated project
    (`is_active` False) can still be read but accepts no changes. `export_unapproved`: whether
    ExportMaskGroup may send mask groups that are not APPROVED to the PACS (owners decide).
    """

    id: int
    name: str
    description: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    export_unapproved: bool = False


@dataclass(frozen=True)
class ProjectMember:
    """A user's role in a project (one per user and project), with the username for display."""

    project_id: int
    user_id: int
    username: str
    role: ProjectRole
    created_at: datetime
