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
from datetime import datetime
from typing import Any, Generic, TypeVar

from pacs_grpc.domain.errors import InvalidArgument

_FIELD = "page_token"
_FOREIGN = "is not a token this service issued"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def filters_fingerprint(*filters: Any) -> str:
    canonical = json.dumps(filters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode(fingerprint: str, position: Sequence[Any]) -> str:
    payload = json.dumps({"f": fingerprint, "p": list(position)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode(
    token: str, fingerprint: str, arity: int, *, kinds: Sequence[type] | None = None
) -> list[Any] | None:
    """The position after which the next page starts; None for the first page.

    Every part is checked against `kinds` (default: all int), so a hand-made token with
    the right shape but a wrong value is refused like any other bad token, never
    turned into a server error further down.
    """
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        position = payload["p"]
        issued_for = payload["f"]
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise InvalidArgument(_FIELD, _FOREIGN) from None
    if not isinstance(position, list) or len(position) != arity:
        raise InvalidArgument(_FIELD, _FOREIGN)
    if issued_for != fingerprint:
        raise InvalidArgument(_FIELD, "was issued for different filters")
    return [
        _part(value, kind) for value, kind in zip(position, kinds or [int] * arity, strict=True)
    ]


def _part(value: Any, kind: type) -> Any:
    if kind is int:
        if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
            return value
    elif kind is datetime:
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is not None:
                return parsed
    else:  # pragma: no cover - a programming error, not input
        raise TypeError(f"no page token part of type {kind.__name__}")
    raise InvalidArgument(_FIELD, _FOREIGN)


T = TypeVar("T")


@dataclass(frozen=True)
class BudgetedRows(Generic[T]):
    """Rows read under a byte budget; `cut` when the budget left some out."""

    rows: list[T]
    cut: bool


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list call. `next_page_token` is empty on the last page; otherwise it is opaque
    and valid only with the same filters (see the module docstring).
    """

    items: list[T]
    next_page_token: str

    @classmethod
    def of(
        cls,
        rows: list[T],
        limit: int,
        fingerprint: str,
        position: Callable[[T], list[Any]],
        *,
        cut: bool = False,
    ) -> Page[T]:
        """A page from `limit + 1` rows: the extra row only says that another page follows.

        `cut`: a byte budget ended the rows early, so another page follows anyway.
        """
        items = rows[:limit]
        more = (cut or len(rows) > limit) and bool(items)
        return cls(items, encode(fingerprint, position(items[-1])) if more else "")
