"""Every item of a paged List call, page after page, fetched as the caller iterates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

_Item = TypeVar("_Item")
_Reply = TypeVar("_Reply", bound="PagedReply")

# Our list RPCs allow up to 500 items a page (MAX_PAGE_SIZE); fewer calls, same items.
PAGE_SIZE = 500


class PagedReply(Protocol):
    @property
    def next_page_token(self) -> str: ...


def all_items(
    fetch: Callable[[str], _Reply], items_of: Callable[[_Reply], Iterable[_Item]]
) -> Iterator[_Item]:
    """`fetch(page_token)` from the first page ("") until a reply has no next token."""
    token = ""
    while True:
        reply = fetch(token)
        yield from items_of(reply)
        token = reply.next_page_token
        if not token:
            return
