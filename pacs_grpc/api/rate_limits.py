"""Per-user limits on the expensive RPCs, so one caller's flood cannot starve the others.

Each user (the token's `sub`) has a token bucket per budget (ticket issuing, completion,
download URLs, push, watch): N a minute, of which a full minute's worth may come at once.
Streams that hold a slot do so for as long as they are open, at most M per user. Over a limit
the call is refused with ResourceExhausted carrying a retry hint, before its use case runs.
Which budget an RPC draws from, and whether it holds a slot, is declared in the contract (its
(pacs.v1.rpc) option); the numbers come from the server's settings.

State lives in this process only: behind a load balancer each replica limits on its own, so a
user gets at most N times the number of replicas. Memory is bounded: a bucket that has refilled
completely says no more than a new one would and is dropped, and past `max_keys` the least
recently used goes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import NoReturn

from pacs_grpc.api.access import POLICY_BY_METHOD
from pacs_grpc.contract import RpcPolicy
from pacs_grpc.domain.errors import ResourceExhausted

# Budget -> (name, what it counts). The name is a metric label and part of the bucket's key;
# budgets keep this order in `limit_names`.
_BUDGETS: dict[RpcPolicy.RateLimit.ValueType, tuple[str, str]] = {
    RpcPolicy.RATE_LIMIT_TICKETS: ("tickets", "ticket requests"),
    RpcPolicy.RATE_LIMIT_COMPLETIONS: ("completions", "completions, imports and exports"),
    RpcPolicy.RATE_LIMIT_PUSHES: ("pushes", "PushMasks streams"),
    RpcPolicy.RATE_LIMIT_WATCHES: ("watches", "WatchAnnotations streams"),
    RpcPolicy.RATE_LIMIT_DOWNLOADS: ("downloads", "download URL requests"),
}

# A stream slot frees up only when one of the user's streams ends; there is no time to compute.
STREAM_RETRY_SECONDS = 5.0


class TokenBuckets:
    """A token bucket per key, refilled continuously at `per_minute / 60` tokens a second."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 50_000
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens, when they were counted, capacity); least recently used first.
        self._buckets: OrderedDict[Hashable, tuple[float, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, per_minute: int) -> float:
        """Take a token: 0.0 when granted, else the seconds until one will be there."""
        now = self._clock()
        tokens = self._tokens(key, now, per_minute)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) * 60.0 / per_minute
        self._buckets[key] = (tokens, now, per_minute)
        self._buckets.move_to_end(key)
        self._forget_idle(now)
        return wait

    def _tokens(self, key: Hashable, now: float, per_minute: int) -> float:
        found = self._buckets.get(key)
        if found is None:
            return float(per_minute)
        tokens, counted_at, _ = found
        return min(float(per_minute), tokens + (now - counted_at) * per_minute / 60.0)

    def _forget_idle(self, now: float) -> None:
        # Least recently used first: stop at the first bucket that still holds a debt.
        while self._buckets:
            key, (tokens, counted_at, capacity) = next(iter(self._buckets.items()))
            full = tokens + (now - counted_at) * capacity / 60.0 >= capacity
            if not full and len(self._buckets) <= self._max_keys:
                return
            del self._buckets[key]


class StreamSlots:
    """How many streams each key has open; a key with none takes no memory."""

    def __init__(self) -> None:
        self._open: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open_count(self, key: Hashable) -> int:
        return self._open.get(key, 0)

    def acquire(self, key: Hashable) -> None:
        self._open[key] = self._open.get(key, 0) + 1

    def release(self, key: Hashable) -> None:
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)


@dataclass(frozen=True)
class Limit:
    """What one limited RPC counts against. `name` is a fixed word, safe as a metric label."""

    name: str
    what: str  # for the refusal's message: "too many <what>"
    per_minute: int  # 0 = no rate limit
    max_open: int = 0  # streams open at once per user; 0 = no cap


class Permit:
    """Held while an admitted call runs; releasing it frees the user's stream slot, if any."""

    def __init__(self, slots: StreamSlots | None = None, key: Hashable = None) -> None:
        self._slots = slots
        self._key = key

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release(self._key)


NO_PERMIT_NEEDED = Permit()


class CallLimits:
    """Admits or refuses a caller's RPC against the limits of its kind."""

    def __init__(
        self,
        *,
        tickets_per_minute: int,
        completions_per_minute: int,
        pushes_per_minute: int,
        watches_per_minute: int,
        max_streams_per_user: int,
        downloads_per_minute: int = 0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 50_000,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """Every number is per user; 0 switches that limit off. `on_refused` gets the limit's
        name (for a metric)."""
        per_minute = {
            RpcPolicy.RATE_LIMIT_TICKETS: tickets_per_minute,
            RpcPolicy.RATE_LIMIT_COMPLETIONS: completions_per_minute,
            RpcPolicy.RATE_LIMIT_PUSHES: pushes_per_minute,
            RpcPolicy.RATE_LIMIT_WATCHES: watches_per_minute,
            RpcPolicy.RATE_LIMIT_DOWNLOADS: downloads_per_minute,
        }
        self._limits: dict[str, Limit] = {
            method: Limit(
                *_BUDGETS[policy.rate_limit],
                per_minute[policy.rate_limit],
                max_streams_per_user if policy.holds_stream_slot else 0,
            )
            for method, policy in POLICY_BY_METHOD.items()
            if policy.rate_limit in _BUDGETS
        }
        self._buckets = TokenBuckets(clock=clock, max_keys=max_keys)
        self._slots = StreamSlots()
        self._on_refused = on_refused

    @property
    def limit_names(self) -> tuple[str, ...]:
        # Several methods may share a budget's bucket (an import counts as a completion).
        used = {limit.name for limit in self._limits.values()}
        return tuple(name for name, _ in _BUDGETS.values() if name in used)

    def admit(self, method: str, subject: str) -> Permit:
        """A permit to run the call (release it when the call ends), or ResourceExhausted."""
        limit = self._limits.get(method)
        if limit is None:
            return NO_PERMIT_NEEDED
        key = (limit.name, subject)
        # The slot is checked before a token is taken, so a refusal costs the user nothing.
        if limit.max_open and self._slots.open_count(key) >= limit.max_open:
            self._refuse(
                limit,
                f"too many open {limit.what}: at most {limit.max_open} per user; "
                f"end one, or retry in {STREAM_RETRY_SECONDS:.0f} s",
                STREAM_RETRY_SECONDS,
            )
        if limit.per_minute:
            wait = self._buckets.take(key, limit.per_minute)
            if wait > 0:
                self._refuse(
                    limit,
                    f"too many {limit.what}: at most {limit.per_minute} a minute per user; "
                    f"retry in {math.ceil(wait)} s",
                    wait,
                )
        if not limit.max_open:
            return NO_PERMIT_NEEDED
        self._slots.acquire(key)
        return Permit(self._slots, key)

    def _refuse(self, limit: Limit, message: str, retry_after_seconds: float) -> NoReturn:
        if self._on_refused is not None:
            self._on_refused(limit.name)
        raise ResourceExhausted(message, retry_after_seconds=retry_after_seconds)
