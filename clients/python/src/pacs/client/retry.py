"""Deadlines, bearer tokens and retries for every call on a PacsClient's channel.

One interceptor does all three, so the generated stubs (`client.masks.ListMasks(...)`) get them
as much as the client's own helpers do:

- every call has a deadline: the caller's `timeout=`, else the method's default. It covers all
  attempts of the call, backoff included, as gRPC's own deadlines do;
- every attempt carries a token fresh from the token provider, and one `x-request-id` shared by
  the attempts of a call, so the server's logs show them together;
- UNAVAILABLE is retried with full-jitter exponential backoff, but only where repeating the call
  cannot do something twice: reads always; creates only when their request carries a
  `request_id` (the server then returns the first result); everything else never, as each RPC
  declares in the contract (METHOD_RETRY). UNAUTHENTICATED gets one more attempt after the
  provider drops its token, and RESOURCE_EXHAUSTED with the server's retry hint (a rate limit
  that refused the call before it ran) is retried after the hinted wait.
"""

from __future__ import annotations

import enum
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import grpc

from pacs.client.tokens import TokenProvider
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, options_pb2

RpcPolicy = options_pb2.RpcPolicy


class Retry(enum.Enum):
    # Reads, and writes whose repetition the contract defines as harmless.
    SAFE = "safe"
    # A create with an idempotency key: retried only when the request carries one.
    WITH_REQUEST_ID = "with_request_id"
    # A write that could apply twice, or a stream that cannot be replayed.
    NEVER = "never"


_RETRY: Mapping[RpcPolicy.Retry.ValueType, Retry] = {
    RpcPolicy.RETRY_SAFE: Retry.SAFE,
    RpcPolicy.RETRY_WITH_REQUEST_ID: Retry.WITH_REQUEST_ID,
    RpcPolicy.RETRY_NEVER: Retry.NEVER,
}


def _declared_policies() -> dict[str, RpcPolicy]:
    """Each RPC's (pacs.v1.rpc) option, by method path ("/pacs.v1.MaskService/PushMasks")."""
    found: dict[str, RpcPolicy] = {}
    for file in (identity_pb2.DESCRIPTOR, annotation_pb2.DESCRIPTOR, mask_pb2.DESCRIPTOR):
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(options_pb2.rpc):
                    found[f"/{service.full_name}/{method.name}"] = options.Extensions[
                        options_pb2.rpc
                    ]
    return found


_POLICIES = _declared_policies()

# Declared by each RPC in the contract (protos/pacs/v1/options.proto, where the proto comments
# say why each call may or may not be repeated). A method not listed is never retried.
METHOD_RETRY: Mapping[str, Retry] = MappingProxyType(
    {method: _RETRY.get(policy.retry, Retry.NEVER) for method, policy in _POLICIES.items()}
)

# Calls the contract expects to take longer than an ordinary one (CompleteUpload checks up to
# 1,000 stored objects; an export or import builds or reads a whole SEG), in seconds.
DEFAULT_TIMEOUTS: Mapping[str, float] = MappingProxyType(
    {
        method: float(policy.default_timeout_seconds)
        for method, policy in _POLICIES.items()
        if policy.default_timeout_seconds
    }
)

_RETRY_AFTER_MS = "retry-after-ms"
_RETRY_AFTER = "retry-after"


@dataclass(frozen=True)
class RetryPolicy:
    """How UNAVAILABLE is retried: attempt n (from 1) waits a uniformly random time in
    [0, min(max_backoff, initial_backoff * multiplier ** (n - 1))] before attempt n + 1."""

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("backoffs must satisfy 0 <= initial_backoff <= max_backoff")

    def backoff(self, attempt: int, draw: Callable[[], float] = random.random) -> float:
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return draw() * ceiling


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class CallPolicy(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """The interceptor PacsClient puts on its channel (see the module's docstring)."""

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        timeouts: Mapping[str, float] = DEFAULT_TIMEOUTS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._tokens = tokens
        self._retry = retry or RetryPolicy()
        self._timeout = timeout
        self._timeouts = timeouts
        self._clock = clock
        self._sleep = sleep
        self._draw = draw

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = _method_name(client_call_details.method)
        timeout = client_call_details.timeout
        deadline = self._clock() + (timeout if timeout is not None else self._default(method))
        metadata = _with_request_id(client_call_details.metadata)
        may_retry_unavailable = retryable(method, request)
        attempt = 0
        token_refreshed = False
        while True:
            attempt += 1
            details = self._details(client_call_details, metadata, deadline - self._clock())
            outcome = continuation(details, request)
            code = outcome.code()
            if code == grpc.StatusCode.OK:
                return outcome
            if (
                code == grpc.StatusCode.UNAUTHENTICATED
                and not token_refreshed
                and self._tokens.invalidate()
            ):
                # The server checks the token before anything else: nothing ran.
                token_refreshed = True
                continue
            wait = self._wait(code, outcome, attempt, may_retry_unavailable)
            if wait is None or attempt >= self._retry.max_attempts:
                return outcome
            if self._clock() + wait >= deadline:
                return outcome
            self._sleep(wait)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        # Streams are long-lived: a deadline only when the caller sets one, and no retries
        # (resuming needs the stream's own position, such as WatchAnnotations' after_event_id).
        return continuation(self._stream_details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._stream_details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._stream_details(client_call_details), request_iterator)

    def _default(self, method: str) -> float:
        return self._timeouts.get(method, self._timeout)

    def _details(
        self, original: grpc.ClientCallDetails, metadata: list[tuple[str, str]], timeout: float
    ) -> _Details:
        return _Details(
            method=original.method,
            timeout=max(timeout, 0.0),
            metadata=[*metadata, ("authorization", f"Bearer {self._tokens.token()}")],
            credentials=original.credentials,
            wait_for_ready=original.wait_for_ready,
            compression=original.compression,
        )

    def _stream_details(self, original: grpc.ClientCallDetails) -> _Details:
        details = self._details(original, _with_request_id(original.metadata), 0.0)
        return replace(details, timeout=original.timeout)

    def _wait(
        self, code: grpc.StatusCode, outcome: Any, attempt: int, may_retry_unavailable: bool
    ) -> float | None:
        if code == grpc.StatusCode.UNAVAILABLE and may_retry_unavailable:
            return self._retry.backoff(attempt, self._draw)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _retry_hint(outcome)
        return None


def retryable(method: str, request: object) -> bool:
    """Whether an UNAVAILABLE answer to this call may be retried (see METHOD_RETRY)."""
    rule = METHOD_RETRY.get(method, Retry.NEVER)
    if rule is Retry.WITH_REQUEST_ID:
        return bool(getattr(request, "request_id", ""))
    return rule is Retry.SAFE


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def _with_request_id(metadata: Any) -> list[tuple[str, str]]:
    pairs = [(str(k), v) for k, v in (metadata or ())]
    if not any(k.lower() == "x-request-id" for k, _ in pairs):
        pairs.append(("x-request-id", str(uuid.uuid4())))
    # The interceptor adds the token itself, fresh for each attempt.
    return [(k, v) for k, v in pairs if k.lower() != "authorization"]


def _retry_hint(outcome: Any) -> float | None:
    """The server's wait before a retry of a rate-limited call, if it sent one."""
    try:
        trailers = outcome.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - a failure without trailers just has no hint
        return None
    hints = {str(k).lower(): v for k, v in trailers}
    for key, scale in ((_RETRY_AFTER_MS, 0.001), (_RETRY_AFTER, 1.0)):
        value = hints.get(key)
        if isinstance(value, str) and value.strip().isdigit():
            return int(value) * scale
    return None
