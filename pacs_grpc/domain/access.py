"""What an RPC requires of its caller."""

from __future__ import annotations

import enum

from pacs_grpc.domain.identity import ProjectRole


class Access(enum.Enum):
    """The requirement of one RPC, checked before (token, admin) and inside (project) it."""

    AUTHENTICATED = "any verified caller"
    PLATFORM_ADMIN = "the platform administrator role"
    PROJECT_VIEWER = "the viewer role in the project"
    PROJECT_ANNOTATOR = "the annotator role in the project"
    PROJECT_OWNER = "the owner role in the project"
    PROJECT_REVIEWER = "the reviewer or owner role in the project"

    @property
    def project_role(self) -> ProjectRole | None:
        return _PROJECT_ROLE.get(self)


_PROJECT_ROLE = {
    Access.PROJECT_VIEWER: ProjectRole.VIEWER,
    Access.PROJECT_ANNOTATOR: ProjectRole.ANNOTATOR,
    Access.PROJECT_OWNER: ProjectRole.OWNER,
    Access.PROJECT_REVIEWER: ProjectRole.REVIEWER,
}
