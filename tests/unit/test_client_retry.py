"""The client's call policy: deadlines, tokens and which failures are retried, on a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from pacs.client.retry import (
    DEFAULT_TIMEOUTS,
    METHOD_RETRY,
    CallPolicy,
    Retry,
    RetryPolicy,
    retryable,
)
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, options_pb2

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
GET_ANNOTATION = "/pacs.v1.AnnotationService/GetAnnotation"
CREATE_ANNOTATION = "/pacs.v1.AnnotationService/CreateAnnotation"
UPDATE_ANNOTATION = "/pacs.v1.AnnotationService/UpdateAnnotation"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Outcome:
    """What a continuation returns: a Call-Future with a status."""

    status: grpc.StatusCode
    trailers: Sequence[tuple[str, str]] = ()

    def code(self) -> grpc.StatusCode:
        return self.status

    def trailing_metadata(self) -> Sequence[tuple[str, str]]:
        return self.trailers


@dataclass
class Server:
    """Answers attempts from a script and remembers what each attempt carried."""

    script: list[Outcome]
    clock: FakeClock
    seen: list[Any] = field(default_factory=list)
    seen_at: list[float] = field(default_factory=list)

    def __call__(self, details: grpc.ClientCallDetails, request: Any) -> Outcome:
        self.seen.append(details)
        self.seen_at.append(self.clock.now)
        self.clock.now += 0.01
        return self.script.pop(0) if self.script else Outcome(OK)


@dataclass
class Tokens:
    issued: list[str] = field(default_factory=list)
    refreshable: bool = False
    invalidated: int = 0

    def token(self) -> str:
        self.issued.append(f"t{len(self.issued) + 1}")
        return self.issued[-1]

    def invalidate(self) -> bool:
        self.invalidated += 1
        return self.refreshable


@dataclass
class Details:
    method: str
    timeout: float | None = None
    metadata: Any = None
    credentials: Any = None
    wait_for_ready: bool | None = None
    compression: Any = None


def policy(clock: FakeClock, tokens: Tokens | None = None, **kwargs: Any) -> CallPolicy:
    return CallPolicy(
        tokens or Tokens(), clock=clock, sleep=clock.sleep, draw=lambda: 1.0, **kwargs
    )


def call(
    interceptor: CallPolicy, server: Server, method: str, request: Any, timeout: float | None = None
) -> Outcome:
    details: Any = Details(method, timeout=timeout)
    result: Outcome = interceptor.intercept_unary_unary(server, details, request)
    return result


def test_unavailable_twice_then_ok_takes_three_attempts_with_growing_backoff() -> None:
    clock = FakeClock()
    server = Server([Outcome(UNAVAILABLE), Outcome(UNAVAILABLE)], clock)
    interceptor = policy(clock, retry=RetryPolicy(initial_backoff=0.2, max_backoff=5.0))
    outcome = call(interceptor, server, GET_ANNOTATION, annotation_pb2.GetAnnotationRequest())
    assert outcome.code() == OK
    assert len(server.seen) == 3
    # draw() is 1.0, so each wait is its ceiling: 0.2, then 0.4.
    assert clock.sleeps == pytest.approx([0.2, 0.4])


def test_backoff_is_full_jitter_under_a_capped_ceiling() -> None:
    retry = RetryPolicy(initial_backoff=0.5, max_backoff=3.0, multiplier=2.0)
    assert [retry.backoff(n, lambda: 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retry.backoff(4, lambda: 0.25) == pytest.approx(0.75)
    assert retry.backoff(1, lambda: 0.0) == 0.0


def test_a_create_without_request_id_is_not_retried() -> None:
    clock = FakeClock()
    server = Server([Outcome(UNAVAILABLE)], clock)
    request = annotation_pb2.CreateAnnotationRequest()
    outcome = call(policy(clock), server, CREATE_ANNOTATION, request)
    assert outcome.code() == UNAVAILABLE
    assert len(server.seen) == 1
    assert clock.sleeps == []


def test_a_create_with_request_id_is_retried() -> None:
    clock = FakeClock()
    server = Server([Outcome(UNAVAILABLE)], clock)
    request = annotation_pb2.CreateAnnotationRequest(request_id="job-7-slice-set")
    outcome = call(policy(clock), server, CREATE_ANNOTATION, request)
    assert outcome.code() == OK
    assert len(server.seen) == 2


def test_writes_without_an_idempotency_key_are_never_retried() -> None:
    clock = FakeClock()
    server = Server([Outcome(UNAVAILABLE)], clock)
    outcome = call(
        policy(clock), server, UPDATE_ANNOTATION, annotation_pb2.UpdateAnnotationRequest()
    )
    assert outcome.code() == UNAVAILABLE
    assert len(server.seen) == 1


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
def test_other_failures_are_returned_at_once(code: grpc.StatusCode) -> None:
    clock = FakeClock()
    server = Server([Outcome(code)], clock)
    outcome = call(policy(clock), server, GET_ANNOTATION, annotation_pb2.GetAnnotationRequest())
    assert outcome.code() == code
    assert len(server.seen) == 1


def test_attempts_stop_at_max_attempts() -> None:
    clock = FakeClock()
    server = Server([Outcome(UNAVAILABLE)] * 10, clock)
    interceptor = policy(clock, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))
    outcome = call(interceptor, server, GET_ANNOTATION, annotation_pb2.GetAnnotationRequest())
    assert outcome.code() == UNAVAILABLE
    assert len(server.seen) == 3


def test_the_deadline_covers_every_attempt_and_the_waits() -> None:
    clock = FakeClock()
    server = Server([Outcome(UNAVAILABLE)] * 10, clock)
    interceptor = policy(
        clock, retry=RetryPolicy(max_attempts=10, initial_backoff=1.0, max_backoff=1.0)
    )
    started = clock.now
    outcome = call(
        interceptor, server, GET_ANNOTATION, annotation_pb2.GetAnnotationRequest(), timeout=2.5
    )
    assert outcome.code() == UNAVAILABLE
    # Attempts at 0, ~1 and ~2 s; a wait past 2.5 s is not started.
    assert len(server.seen) == 3
    assert clock.now - started < 2.5
    # Each attempt gets what is left of the call's deadline, not a fresh one.
    timeouts = [d.timeout for d in server.seen]
    assert timeouts[0] == pytest.approx(2.5)
    assert timeouts == sorted(timeouts, reverse=True)
    assert timeouts[2] == pytest.approx(2.5 - (server.seen_at[2] - started))


def test_default_deadline_comes_from_the_method_table() -> None:
    clock = FakeClock()
    server = Server([], clock)
    interceptor = policy(clock, timeout=7.0)
    call(interceptor, server, GET_ANNOTATION, annotation_pb2.GetAnnotationRequest())
    complete = "/pacs.v1.MaskService/CompleteUpload"
    call(interceptor, server, complete, mask_pb2.CompleteUploadRequest())
    assert server.seen[0].timeout == pytest.approx(7.0)
    assert server.seen[1].timeout == pytest.approx(DEFAULT_TIMEOUTS[complete])


def test_each_attempt_carries_a_fresh_token_and_one_shared_request_id() -> None:
    clock = FakeClock()
    tokens = Tokens()
    server = Server([Outcome(UNAVAILABLE)], clock)
    call(policy(clock, tokens), server, GET_ANNOTATION, annotation_pb2.GetAnnotationRequest())
    first, second = (dict(d.metadata) for d in server.seen)
    assert first["authorization"] == "Bearer t1"
    assert second["authorization"] == "Bearer t2"
    assert first["x-request-id"] == second["x-request-id"]
    assert len(first["x-request-id"]) == 36


def test_a_callers_authorization_is_replaced_and_request_id_kept() -> None:
    clock = FakeClock()
    server = Server([], clock)
    details: Any = Details(
        GET_ANNOTATION, metadata=(("authorization", "Bearer stale"), ("x-request-id", "mine"))
    )
    policy(clock).intercept_unary_unary(server, details, annotation_pb2.GetAnnotationRequest())
    sent = server.seen[0].metadata
    assert [v for k, v in sent if k == "authorization"] == ["Bearer t1"]
    assert [v for k, v in sent if k == "x-request-id"] == ["mine"]


def test_unauthenticated_gets_one_more_attempt_when_the_provider_can_refresh() -> None:
    clock = FakeClock()
    tokens = Tokens(refreshable=True)
    unauthenticated = Outcome(grpc.StatusCode.UNAUTHENTICATED)
    server = Server([unauthenticated, unauthenticated], clock)
    request = annotation_pb2.UpdateAnnotationRequest()
    outcome = call(policy(clock, tokens), server, UPDATE_ANNOTATION, request)
    # Refused twice: the second refusal is returned, not retried again.
    assert outcome.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(server.seen) == 2
    assert tokens.invalidated == 1


def test_unauthenticated_with_a_static_token_is_returned_at_once() -> None:
    clock = FakeClock()
    server = Server([Outcome(grpc.StatusCode.UNAUTHENTICATED)], clock)
    call(policy(clock), server, GET_ANNOTATION, annotation_pb2.GetAnnotationRequest())
    assert len(server.seen) == 1


def test_a_rate_limited_call_is_retried_after_the_servers_hint() -> None:
    clock = FakeClock()
    limited = Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after-ms", "1500"),))
    server = Server([limited], clock)
    # Even a write without a request id: the limit refused it before it ran.
    request = annotation_pb2.UpdateAnnotationRequest()
    outcome = call(policy(clock), server, UPDATE_ANNOTATION, request)
    assert outcome.code() == OK
    assert clock.sleeps == [1.5]


def test_resource_exhausted_without_a_hint_is_not_retried() -> None:
    clock = FakeClock()
    server = Server([Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED)], clock)
    call(policy(clock), server, GET_ANNOTATION, annotation_pb2.GetAnnotationRequest())
    assert len(server.seen) == 1


def test_a_hint_past_the_deadline_is_not_waited_for() -> None:
    clock = FakeClock()
    limited = Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after", "60"),))
    server = Server([limited], clock)
    outcome = call(
        policy(clock), server, GET_ANNOTATION, annotation_pb2.GetAnnotationRequest(), timeout=10
    )
    assert outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert clock.sleeps == []


def test_streams_get_a_token_and_no_default_deadline() -> None:
    clock = FakeClock()
    seen: list[Any] = []

    def continuation(details: grpc.ClientCallDetails, request: Any) -> str:
        seen.append(details)
        return "stream"

    details: Any = Details("/pacs.v1.AnnotationService/WatchAnnotations")
    assert policy(clock).intercept_unary_stream(continuation, details, object()) == "stream"
    assert seen[0].timeout is None
    assert dict(seen[0].metadata)["authorization"] == "Bearer t1"


def _contract() -> dict[str, MethodDescriptor]:
    return {
        f"/{service.full_name}/{method.name}": method
        for module in (identity_pb2, annotation_pb2, mask_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_the_retry_table_covers_exactly_the_contract() -> None:
    assert set(METHOD_RETRY) == set(_contract())
    for path, method in _contract().items():
        declared = method.GetOptions().Extensions[options_pb2.rpc].retry
        assert METHOD_RETRY[path].name == options_pb2.RpcPolicy.Retry.Name(declared).removeprefix(
            "RETRY_"
        )


def test_a_retry_with_request_id_is_declared_exactly_where_the_request_has_one() -> None:
    for path, method in _contract().items():
        has_key = "request_id" in method.input_type.fields_by_name
        assert (METHOD_RETRY[path] is Retry.WITH_REQUEST_ID) == has_key, path


def test_streams_are_never_retried_and_get_no_default_deadline() -> None:
    streams = [p for p, m in _contract().items() if m.client_streaming or m.server_streaming]
    assert streams
    for path in streams:
        assert METHOD_RETRY[path] is Retry.NEVER
        assert path not in DEFAULT_TIMEOUTS


def test_reads_are_always_retried() -> None:
    reads = [p for p, m in _contract().items() if m.name.startswith(("Get", "List"))]
    assert reads
    assert all(METHOD_RETRY[path] is Retry.SAFE for path in reads)


def test_creates_are_retryable_only_with_a_request_id() -> None:
    project = "/pacs.v1.IdentityService/CreateProject"
    assert not retryable(project, identity_pb2.CreateProjectRequest())
    assert retryable(project, identity_pb2.CreateProjectRequest(request_id="k"))
    assert not retryable("/pacs.v1.Unknown/Method", identity_pb2.CreateProjectRequest())
    export = "/pacs.v1.MaskService/ExportMaskGroup"
    assert not retryable(export, mask_pb2.ExportMaskGroupRequest(group_id=1))
    assert retryable(export, mask_pb2.ExportMaskGroupRequest(group_id=1, request_id="k"))
