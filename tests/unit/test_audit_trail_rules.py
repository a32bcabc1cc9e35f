"""The audit trail of one call: what it gathers, and that nothing is gathered too late."""

from __future__ import annotations

import pytest

from pacs_grpc.domain.audit import AuditTrail, AuditTrailClosed


def _trail() -> AuditTrail:
    return AuditTrail(action="ListMasks", subject="s", client_id="c", request_id="r")


def test_ids_touched_twice_are_recorded_once() -> None:
    trail = _trail()
    trail.touch(resource_type="mask_group", resource_ids=[4])
    trail.touch(project_id=7, resource_ids=[4])
    entry = trail.entry("ok")
    assert (entry.project_id, entry.resource_type, entry.resource_ids) == (7, "mask_group", (4,))


def test_what_a_call_returned_replaces_what_it_touched_on_the_way() -> None:
    trail = _trail()
    trail.touch(project_id=7, resource_type="mask_group", resource_ids=[4], study_uid="1.2")
    trail.returned("mask", [11, 12, 11])
    entry = trail.entry("ok")
    assert (entry.project_id, entry.study_uid) == (7, "1.2")
    assert (entry.resource_type, entry.resource_ids) == ("mask", (11, 12))


@pytest.mark.parametrize("state", ["written", "recorded"])
def test_nothing_is_gathered_after_the_row_is_written(state: str) -> None:
    trail = _trail()
    setattr(trail, state, True)
    with pytest.raises(AuditTrailClosed):
        trail.touch(resource_ids=[1])
    with pytest.raises(AuditTrailClosed):
        trail.returned("mask", [1])
