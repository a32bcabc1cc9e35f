"""`pacs-grpc serve` as a real process on real PostgreSQL and SeaweedFS.

These tests stop and restart the dependencies, so the module runs its own
stack instead of sharing one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2

from pacs_devstack.ports import free_port
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from pacs_grpc.bootstrap import SERVICE_NAMES
from tests.support.stacks import own_stack

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST_PROBES = {
    "HEALTH_PROBE_INTERVAL_SECONDS": "0.5",
    "HEALTH_PROBE_TIMEOUT_SECONDS": "1",
    "SHUTDOWN_GRACE_SECONDS": "10",
    "DATABASE_CONNECT_TIMEOUT_SECONDS": "2",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(scratch_dir: Callable[[str], Path]) -> Iterator[LocalStack]:
    with own_stack(scratch_dir("stack"), FAST_PROBES) as local:
        yield local


@pytest.fixture(scope="module")
def server(stack: LocalStack, artifacts_dir: Path) -> ServerProcess:
    return stack.start_server(log_path=artifacts_dir / "server-process.log")


def _wait_for(server: ServerProcess, status: int, timeout: float) -> float:
    started = time.monotonic()
    assert server.wait_for_status(status, timeout), f"health did not become {status} in {timeout}s"
    return time.monotonic() - started


def test_every_service_is_serving_with_both_dependencies_up(server: ServerProcess) -> None:
    for name in ("", *SERVICE_NAMES):
        assert server.health(name) == SERVING, name


def test_health_follows_postgres(stack: LocalStack, server: ServerProcess) -> None:
    assert stack.postgres is not None
    stack.postgres.kill()
    try:
        assert _wait_for(server, NOT_SERVING, 5.0) < 5.0
        assert {server.health(name) for name in SERVICE_NAMES} == {NOT_SERVING}
    finally:
        stack.postgres.start()
    _wait_for(server, SERVING, 15.0)


def test_health_follows_object_storage(stack: LocalStack, server: ServerProcess) -> None:
    assert stack.s3 is not None
    stack.s3.kill()
    try:
        assert _wait_for(server, NOT_SERVING, 5.0) < 5.0
    finally:
        stack.s3.restart()
    _wait_for(server, SERVING, 15.0)


def _unary_methods() -> list[tuple[str, type]]:
    methods = []
    for module in (identity_pb2, annotation_pb2, mask_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if not method.client_streaming and not method.server_streaming:
                    request_class = getattr(module, method.input_type.name)
                    methods.append((f"/{service.full_name}/{method.name}", request_class))
    return methods


def _call_each(
    address: str, methods: list[tuple[str, type]], metadata: tuple[tuple[str, str], ...]
) -> dict[str, grpc.StatusCode]:
    codes = {}
    with grpc.insecure_channel(address) as channel:
        for path, request_class in methods:
            call = channel.unary_unary(
                path,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=lambda data: data,
            )
            try:
                call(request_class(), metadata=metadata, timeout=5)
                codes[path] = grpc.StatusCode.OK
            except grpc.RpcError as error:
                codes[path] = error.code()
    return codes


def test_every_rpc_needs_a_token(server: ServerProcess) -> None:
    codes = _call_each(server.address, _unary_methods(), ())
    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}


def test_an_empty_request_to_any_rpc_gets_a_clear_status(
    stack: LocalStack, server: ServerProcess
) -> None:
    """Never UNKNOWN, INTERNAL or UNIMPLEMENTED: every RPC exists and explains a refusal."""
    assert stack.issuer is not None
    token = stack.issuer.mint("empty-requester")
    codes = _call_each(server.address, _unary_methods(), (("authorization", f"Bearer {token}"),))
    unclear = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED}
    assert not {path: code for path, code in codes.items() if code in unclear}
    assert grpc.StatusCode.INVALID_ARGUMENT in codes.values()


def _reflection_request(symbol: str) -> reflection_pb2.ServerReflectionRequest:
    return reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)


def test_reflection_describes_the_services(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        listing = next(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        names = {s.name for s in listing.list_services_response.service}
        assert set(SERVICE_NAMES) <= names
        reply = next(
            stub.ServerReflectionInfo(iter([_reflection_request("pacs.v1.MaskService")]), timeout=5)
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in reply.file_descriptor_response.file_descriptor_proto
        ]
        assert "pacs/v1/mask.proto" in {f.name for f in files}


def test_reflection_can_be_switched_off(stack: LocalStack, artifacts_dir: Path) -> None:
    port = free_port()
    env = {**stack.server_environment(port), "GRPC_REFLECTION": "false"}
    server = ServerProcess(env, port, log_path=artifacts_dir / "server-no-reflection.log")
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as raised:
                next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert server.terminate() == 0


def test_sigterm_lets_in_flight_rpcs_finish_then_exits(
    stack: LocalStack, artifacts_dir: Path
) -> None:
    port = free_port()
    server = ServerProcess(
        stack.server_environment(port), port, log_path=artifacts_dir / "server-sigterm.log"
    )
    server.start()
    requests: list[reflection_pb2.ServerReflectionRequest] = []
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        # A bidirectional stream is an RPC that stays in flight as long as
        # the client wants, so it straddles the SIGTERM for certain.
        outbox: list[reflection_pb2.ServerReflectionRequest | None] = [
            _reflection_request("pacs.v1.AnnotationService")
        ]

        def feed() -> Iterator[reflection_pb2.ServerReflectionRequest]:
            while True:
                while not outbox:
                    time.sleep(0.01)
                item = outbox.pop(0)
                if item is None:
                    return
                requests.append(item)
                yield item

        stream = stub.ServerReflectionInfo(feed(), timeout=30)
        assert next(stream).file_descriptor_response.file_descriptor_proto
        sent_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.process.poll() is None, "the server must wait for the open RPC"
        outbox.append(_reflection_request("pacs.v1.MaskService"))
        assert next(stream).file_descriptor_response.file_descriptor_proto
        outbox.append(None)
        assert list(stream) == []
        assert stream.code() is grpc.StatusCode.OK
    assert server.process.wait(15) == 0
    assert time.monotonic() - sent_at < 10 + 5, "exits within the grace period"
    assert len(requests) == 2


def _serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs_grpc", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_a_database_without_the_schema(stack: LocalStack) -> None:
    assert stack.postgres is not None
    env = stack.server_environment(free_port())
    env["DATABASE_URL"] = stack.postgres.create_database("never_migrated")
    result = _serve_once(env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("pacs-grpc: database schema:")
    assert "pacs-grpc migrate" in result.stderr


def test_serve_refuses_invalid_configuration_in_one_line(stack: LocalStack) -> None:
    env = stack.server_environment(free_port())
    env["GRPC_PORT"] = "fifty"
    result = _serve_once(env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "pacs-grpc: configuration error: GRPC_PORT must be an integer, got 'fifty'"
    )
