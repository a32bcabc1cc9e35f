"""A refused call is counted before its status leaves: grpc's abort sends the status at once,
and a client reading /metrics right after its refusal must find it counted."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, NoReturn, cast

import grpc
import pytest
from grpc import aio

from pacs_grpc.api.interceptors import EdgeInterceptor
from pacs_grpc.domain.errors import NotFound, ResourceExhausted

METHOD = "/pacs.v1.MaskService/CreateUploadUrls"


class Recorder:
    def __init__(self) -> None:
        self.finished: list[tuple[str, grpc.StatusCode]] = []

    def rpc_finished(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None:
        self.finished.append((method, code))


class Context:
    """The part of aio.ServicerContext the edge uses; abort notes what was counted by then."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self.counted_at_abort: list[tuple[str, grpc.StatusCode]] | None = None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float | None:
        return None

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def code(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.counted_at_abort = list(self._recorder.finished)
        raise aio.AbortError()


async def _served(handler: Callable[[Any, Any], Awaitable[Any]]) -> tuple[Recorder, Context]:
    recorder = Recorder()
    edge = EdgeInterceptor(metrics=recorder)

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(handler)

    wrapped = await edge.intercept_service(
        continuation, cast(grpc.HandlerCallDetails, SimpleNamespace(method=METHOD))
    )
    context = Context(recorder)
    assert wrapped.unary_unary is not None
    with pytest.raises(aio.AbortError):
        await wrapped.unary_unary(object(), cast(Any, context))
    return recorder, context


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            ResourceExhausted("too many ticket requests", retry_after_seconds=1),
            "RESOURCE_EXHAUSTED",
        ),
        (NotFound("annotation not found"), "NOT_FOUND"),
        (RuntimeError("a bug"), "INTERNAL"),
    ],
)
async def test_the_outcome_is_counted_once_and_before_the_status_is_sent(
    error: Exception, code: str
) -> None:
    async def handler(request: Any, context: Any) -> Any:
        raise error

    recorder, context = await _served(handler)
    counted = [(METHOD, grpc.StatusCode[code])]
    assert context.counted_at_abort == counted
    assert recorder.finished == counted
