"""Domain errors: what went wrong, in the service's own terms.

Use cases and adapters raise these; the API edge maps each class to one gRPC
status in a single table (pacs_grpc.api.errors). Messages reach clients, so
they name fields and never carry patient data, client-chosen UIDs or
exception text from libraries.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a client may be told about."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """The request itself is wrong; `field` names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(DomainError):
    """The resource does not exist or the caller may not know that it does."""


class AlreadyExists(DomainError):
    """A unique value is taken; `field` names it."""

    def __init__(self, field: str, problem: str = "already taken") -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class FailedPrecondition(DomainError):
    """The request is valid but the system's state does not allow it."""


class Conflict(DomainError):
    """A concurrent change won (stale etag, lost race); retrying may succeed."""


class Unauthenticated(DomainError):
    """No valid credential."""


class PermissionDenied(DomainError):
    """The caller is known and may read, but may not do this."""


class ResourceExhausted(DomainError):
    """A quota or limit is exceeded; `retry_after_seconds` hints when to retry."""

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(DomainError):
    """A dependency (database, object storage) cannot be reached; retryable."""
