"""Create calls with a client `request_id` run at most once per caller and key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from pacs_grpc.domain.errors import FailedPrecondition, InvalidArgument
from pacs_grpc.services.context import CallContext
from pacs_grpc.services.ports import IdempotencyStore, TxT

T = TypeVar("T")


async def create_once(
    store: IdempotencyStore[TxT],
    conn: TxT,
    call: CallContext,
    *,
    operation: str,
    request_id: str | None,
    fingerprint: str,
    create: Callable[[], Awaitable[T]],
    find: Callable[[int], Awaitable[T | None]],
    id_of: Callable[[T], int],
) -> tuple[T, bool]:
    """The resource, and whether this call created it (False: a retry got the first result).

    Concurrent retries serialise on the key inside the caller's transaction, so one creates
    and the others find its key once it commits. The same key with a different request
    (another fingerprint) is refused rather than answered with someone else's result.
    """
    if request_id is None:
        return await create(), True
    user_id = call.caller.user_id
    earlier = await store.lock_and_find(conn, user_id, operation, request_id)
    if earlier is not None:
        resource_id, earlier_fingerprint = earlier
        if earlier_fingerprint != fingerprint:
            raise InvalidArgument("request_id", "was already used for a different request")
        found = await find(resource_id)
        if found is None:
            raise FailedPrecondition("what this request_id created no longer exists")
        return found, False
    created = await create()
    await store.remember(
        conn,
        user_id=user_id,
        operation=operation,
        request_id=request_id,
        resource_id=id_of(created),
        fingerprint=fingerprint,
    )
    return created, True
