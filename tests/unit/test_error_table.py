from __future__ import annotations

import grpc

from pacs_grpc.api.errors import STATUS_BY_ERROR, status_for, trailing_metadata_for
from pacs_grpc.domain import errors


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


def test_every_domain_error_has_a_status() -> None:
    """Also the subclasses adapters define (they inherit their parent's status)."""
    import pacs_grpc.bootstrap  # noqa: F401 - loads every module that defines one

    missing = {
        f"{cls.__module__}.{cls.__name__}"
        for cls in _all_subclasses(errors.DomainError)
        if not any(base in STATUS_BY_ERROR for base in cls.__mro__)
    }
    assert not missing, f"domain errors without a gRPC status: {sorted(missing)}"


def test_no_client_mistake_maps_to_internal_or_unknown() -> None:
    assert grpc.StatusCode.INTERNAL not in STATUS_BY_ERROR.values()
    assert grpc.StatusCode.UNKNOWN not in STATUS_BY_ERROR.values()


def test_subclass_inherits_its_parents_status() -> None:
    class StaleEtag(errors.Conflict):
        pass

    assert status_for(StaleEtag("etag: stale")) is grpc.StatusCode.ABORTED


def test_invalid_argument_message_names_the_field() -> None:
    error = errors.InvalidArgument("study_uid", "must be a DICOM UID")
    assert error.message == "study_uid: must be a DICOM UID"
    assert status_for(error) is grpc.StatusCode.INVALID_ARGUMENT


def test_resource_exhausted_carries_a_retry_hint() -> None:
    error = errors.ResourceExhausted("too many uploads", retry_after_seconds=2.4)
    # Rounded up: waiting 2 s of a 2.4 s refusal would only be refused again.
    assert trailing_metadata_for(error) == (("retry-after", "3"), ("retry-after-ms", "2400"))
    assert trailing_metadata_for(errors.NotFound("annotation not found")) == ()
