"""Opaque keyset page tokens.

A token carries the last row's sort key and a fingerprint of the filters it
was issued for, so a token reused with other filters is refused instead of
silently paging through a different list. Tokens are not signed: whatever a
client puts in one, every page is still filtered by what the caller may read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pacs_grpc.domain.errors import InvalidArgument

_FIELD = "page_token"


def filters_fingerprint(*filters: Any) -> str:
    canonical = json.dumps(filters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode(fingerprint: str, position: Sequence[Any]) -> str:
    payload = json.dumps({"f": fingerprint, "p": list(position)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode(token: str, fingerprint: str, arity: int) -> list[Any] | None:
    """The position after which the next page starts; None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        position = payload["p"]
        issued_for = payload["f"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument(_FIELD, "is not a token this service issued") from None
    if not isinstance(position, list) or len(position) != arity:
        raise InvalidArgument(_FIELD, "is not a token this service issued")
    if issued_for != fingerprint:
        raise InvalidArgument(_FIELD, "was issued for different filters")
    return position


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str

    @classmethod
    def of(
        cls, rows: list[T], limit: int, fingerprint: str, position: Callable[[T], list[Any]]
    ) -> Page[T]:
        """A page from `limit + 1` rows: the extra row only says that another page follows."""
        items = rows[:limit]
        more = len(rows) > limit and bool(items)
        return cls(items, encode(fingerprint, position(items[-1])) if more else "")
