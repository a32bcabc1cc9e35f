"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import math

import grpc

from pacs_grpc.domain import errors

# Order matters only for subclasses; every DomainError subclass is listed so a
# new one cannot silently fall through to INTERNAL (a unit test checks this).
STATUS_BY_ERROR: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(error: errors.DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def trailing_metadata_for(error: errors.DomainError) -> tuple[tuple[str, str], ...]:
    """Machine-readable hints that travel with the status."""
    if isinstance(error, errors.ResourceExhausted) and error.retry_after_seconds is not None:
        # Rounded up: a client that waits the hint must not be refused again. The
        # milliseconds are for clients that can wait less than a whole second.
        wait = error.retry_after_seconds
        return (
            ("retry-after", str(max(1, math.ceil(wait)))),
            ("retry-after-ms", str(math.ceil(wait * 1000))),
        )
    return ()
