"""Page tokens: what the service issued comes back as it was; anything else is the client's
mistake, named as such, whatever part of the token was altered."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from pacs_grpc.domain import paging
from pacs_grpc.domain.errors import InvalidArgument

FINGERPRINT = paging.filters_fingerprint("projects", False)


def _forged(position: Any, fingerprint: str = FINGERPRINT) -> str:
    payload = json.dumps({"f": fingerprint, "p": position}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def test_an_issued_token_decodes_to_its_position() -> None:
    when = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    token = paging.encode(FINGERPRINT, [when.isoformat(), 42])
    assert paging.decode(token, FINGERPRINT, 2, kinds=(datetime, int)) == [when, 42]
    assert paging.decode(paging.encode(FINGERPRINT, [7]), FINGERPRINT, 1) == [7]
    assert paging.decode("", FINGERPRINT, 1) is None


@pytest.mark.parametrize(
    "position",
    [
        ["seven"],  # well-formed, but the position is not a number
        [7.5],
        [True],
        [None],
        [[7]],
        [{"id": 7}],
        [2**63],
        [-(2**63) - 1],
        [1, 2],
        [],
        "7",
    ],
)
def test_a_hand_made_id_position_is_refused(position: Any) -> None:
    with pytest.raises(InvalidArgument) as raised:
        paging.decode(_forged(position), FINGERPRINT, 1)
    assert raised.value.field == "page_token"


@pytest.mark.parametrize(
    "position",
    [
        ["yesterday", 1],
        ["2026-12-02T06:00:00", 1],  # no time zone: not one this service issued
        [20261202, 1],
        ["2026-12-02T06:00:00+00:00", "1"],
    ],
)
def test_a_hand_made_time_position_is_refused(position: Any) -> None:
    with pytest.raises(InvalidArgument) as raised:
        paging.decode(_forged(position), FINGERPRINT, 2, kinds=(datetime, int))
    assert raised.value.field == "page_token"


@pytest.mark.parametrize(
    "token",
    [
        "%%%",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"p": [1]}').decode(),
        base64.urlsafe_b64encode(b"[" * 100_000).decode(),
    ],
)
def test_a_token_that_is_not_ours_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        paging.decode(token, FINGERPRINT, 1)
    assert raised.value.message == "page_token: is not a token this service issued"


def test_a_token_for_other_filters_is_refused() -> None:
    token = paging.encode(paging.filters_fingerprint("projects", True), [7])
    with pytest.raises(InvalidArgument) as raised:
        paging.decode(token, FINGERPRINT, 1)
    assert raised.value.message == "page_token: was issued for different filters"
