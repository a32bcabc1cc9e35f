"""PacsClient's retries over a real gRPC connection, against a scripted server on loopback.

The server is a stand-in on purpose: what is tested is the client's behaviour when a server
answers UNAVAILABLE, which the real one does only while it is going away.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from pacs.client import PacsClient, RetryPolicy, StaticToken
from pacs.v1 import annotation_pb2, identity_pb2

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


@dataclass
class Script:
    """How many of the next calls of each method fail with UNAVAILABLE."""

    failures: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    request_ids: dict[str, list[str]] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            self.tokens.append(str(metadata.get("authorization", "")))
            self.request_ids.setdefault(method, []).append(str(metadata.get("x-request-id")))
            failing = self.failures.get(method, 0)
            if failing:
                self.failures[method] = failing - 1
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")


def handler(
    script: Script, method: str, request_type: type[Message], answer: Callable[[Any], Message]
) -> grpc.RpcMethodHandler[Any, Message]:
    def behave(request: Any, context: grpc.ServicerContext) -> Message:
        script.answer(method, context)
        return answer(request)

    return grpc.unary_unary_rpc_method_handler(
        behave,
        request_deserializer=request_type.FromString,
        response_serializer=lambda message: message.SerializeToString(),
    )


def services(script: Script) -> list[grpc.GenericRpcHandler[Any, Any]]:
    login = handler(
        script, "Login", identity_pb2.LoginRequest,
        lambda _: identity_pb2.LoginResponse(user=identity_pb2.User(id=7, username="pipeline")),
    )  # fmt: skip
    create = handler(
        script, "CreateAnnotation", annotation_pb2.CreateAnnotationRequest,
        lambda request: annotation_pb2.CreateAnnotationResponse(
            annotation=annotation_pb2.Annotation(id=11, project_id=request.annotation.project_id)
        ),
    )  # fmt: skip
    return [
        grpc.method_handlers_generic_handler("pacs.v1.IdentityService", {"Login": login}),
        grpc.method_handlers_generic_handler(
            "pacs.v1.AnnotationService", {"CreateAnnotation": create}
        ),
    ]


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def address(script: Script) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(services(script))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(5)


@pytest.fixture
def client(address: str) -> Iterator[PacsClient]:
    with PacsClient(address, "token-1", insecure=True, retry=FAST, timeout=10) as client:
        yield client


def test_unavailable_twice_then_ok_succeeds_on_the_third_attempt(
    client: PacsClient, script: Script
) -> None:
    script.failures["Login"] = 2
    reply = client.login()
    assert reply.user.username == "pipeline"
    assert script.calls["Login"] == 3
    # One logical call: the server's logs can tie the attempts together.
    assert len(set(script.request_ids["Login"])) == 1
    assert set(script.tokens) == {"Bearer token-1"}


def test_unavailable_past_the_attempt_budget_reaches_the_caller(
    client: PacsClient, script: Script
) -> None:
    script.failures["Login"] = 10
    with pytest.raises(grpc.RpcError) as raised:
        client.login()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert script.calls["Login"] == FAST.max_attempts


def test_a_create_annotation_without_request_id_is_not_retried(
    client: PacsClient, script: Script
) -> None:
    script.failures["CreateAnnotation"] = 1
    request = annotation_pb2.CreateAnnotationRequest(
        annotation=annotation_pb2.Annotation(project_id=3)
    )
    with pytest.raises(grpc.RpcError) as raised:
        client.annotations.CreateAnnotation(request)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert script.calls["CreateAnnotation"] == 1


def test_the_clients_create_annotation_carries_a_request_id_and_is_retried(
    client: PacsClient, script: Script
) -> None:
    script.failures["CreateAnnotation"] = 2
    annotation = client.create_annotation(
        project_id=3, study_uid="1.2.3", annotation_type="point", data={"x": 1}
    )
    assert annotation.id == 11
    assert script.calls["CreateAnnotation"] == 3


def test_an_unreachable_server_is_tried_max_attempts_times() -> None:
    counted = CountingToken("t")
    # Bound but not listening: connections are refused, and no other process can take the port.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{closed.getsockname()[1]}"
        client = PacsClient(target, counted, insecure=True, retry=FAST, timeout=10)
        with client, pytest.raises(grpc.RpcError) as raised:
            client.login()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert counted.calls == FAST.max_attempts


class CountingToken(StaticToken):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.calls = 0

    def token(self) -> str:
        self.calls += 1
        return super().token()
