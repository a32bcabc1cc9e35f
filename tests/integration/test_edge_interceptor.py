"""The edge interceptor on a real grpc.aio server on loopback.

The servicer here is the test's own, so a handler can raise on purpose; the
interceptor under test is the production one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc

from pacs_grpc.api.interceptors import EdgeInterceptor
from pacs_grpc.domain import errors
from pacs_grpc.logs import JsonFormatter

SECRET_TEXT = "connection to 10.0.0.7 failed for PATIENT^SENTINEL"


class _Servicer(annotation_pb2_grpc.AnnotationServiceServicer):
    async def GetAnnotation(
        self, request: annotation_pb2.GetAnnotationRequest, context: Any
    ) -> annotation_pb2.GetAnnotationResponse:
        if request.annotation_id == 1:
            raise RuntimeError(SECRET_TEXT)
        if request.annotation_id == 2:
            raise errors.NotFound("annotation not found")
        if request.annotation_id == 3:
            raise errors.InvalidArgument("annotation_id", "must be positive")
        if request.annotation_id == 4:
            raise errors.ResourceExhausted("slow down", retry_after_seconds=3)
        return annotation_pb2.GetAnnotationResponse(
            annotation=annotation_pb2.Annotation(id=request.annotation_id)
        )

    async def WatchAnnotations(
        self, request: annotation_pb2.WatchAnnotationsRequest, context: Any
    ) -> AsyncIterator[annotation_pb2.WatchAnnotationsResponse]:
        yield annotation_pb2.WatchAnnotationsResponse(event_id=1)
        raise RuntimeError(SECRET_TEXT)


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[annotation_pb2_grpc.AnnotationServiceAsyncStub]:
    server = aio.server(interceptors=[EdgeInterceptor()])
    # The RPCs _Servicer leaves out fall back to the generated UNIMPLEMENTED ones.
    servicer = _Servicer()  # type: ignore[abstract]
    annotation_pb2_grpc.add_AnnotationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield annotation_pb2_grpc.AnnotationServiceStub(channel)
    await server.stop(None)


async def _get(stub: Any, annotation_id: int) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.GetAnnotation(
            annotation_pb2.GetAnnotationRequest(annotation_id=annotation_id), timeout=5
        )
    return raised.value


async def test_unexpected_exception_is_internal_with_an_id_and_no_text(
    stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pacs_grpc"):
        error = await _get(stub, 1)
    assert error.code() is grpc.StatusCode.INTERNAL
    details = error.details() or ""
    assert SECRET_TEXT not in details
    assert "PATIENT" not in details
    assert details.startswith("internal error (error id ")
    error_id = details.removeprefix("internal error (error id ").rstrip(")")
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert any(r.exc_info for r in logged), "the traceback is logged under the same id"


@pytest.mark.parametrize(
    ("annotation_id", "code", "details"),
    [
        (2, grpc.StatusCode.NOT_FOUND, "annotation not found"),
        (3, grpc.StatusCode.INVALID_ARGUMENT, "annotation_id: must be positive"),
        (4, grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down"),
    ],
)
async def test_domain_errors_map_through_the_table(
    stub: Any, annotation_id: int, code: grpc.StatusCode, details: str
) -> None:
    error = await _get(stub, annotation_id)
    assert error.code() is code
    assert error.details() == details
    trailers: dict[str, Any] = dict(error.trailing_metadata() or ())  # type: ignore[arg-type]
    assert trailers.get("x-request-id")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert trailers["retry-after"] == "3"


async def test_unimplemented_rpc_is_unimplemented_not_unknown(stub: Any) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.ListAnnotations(annotation_pb2.ListAnnotationsRequest(), timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "ListAnnotations" in (raised.value.details() or "")


async def test_stream_failing_midway_is_internal_after_the_first_message(stub: Any) -> None:
    call = stub.WatchAnnotations(annotation_pb2.WatchAnnotationsRequest(project_id=1), timeout=5)
    first = await call.read()
    assert first.event_id == 1
    with pytest.raises(aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() is grpc.StatusCode.INTERNAL
    assert SECRET_TEXT not in (raised.value.details() or "")


async def test_each_rpc_logs_one_line_with_method_code_and_duration(
    stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pacs_grpc.rpc"):
        call = stub.GetAnnotation(
            annotation_pb2.GetAnnotationRequest(annotation_id=42),
            metadata=(("x-request-id", "req-42"), ("authorization", "Bearer secret-token")),
            timeout=5,
        )
        reply = await call
    assert reply.annotation.id == 42
    assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata() or ())
    lines = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "pacs_grpc.rpc" and getattr(r, "request_id", None) == "req-42"
    ]
    assert len(lines) == 1
    assert lines[0]["method"] == "/pacs.v1.AnnotationService/GetAnnotation"
    assert lines[0]["code"] == "OK"
    assert lines[0]["duration_ms"] >= 0
    assert "secret-token" not in caplog.text
