"""The edge every RPC passes: access, limits, error mapping, audit, metrics, one log line.

grpc.aio sends an exception escaping a handler to the client as UNKNOWN with
the exception's text. Here domain errors become their status from the one
table, and anything unexpected becomes INTERNAL with an opaque error id that
is also logged with the (redacted) traceback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc import aio

from pacs_grpc import deadlines
from pacs_grpc.api.errors import status_for, trailing_metadata_for
from pacs_grpc.api.gate import AccessGate
from pacs_grpc.api.rate_limits import Permit
from pacs_grpc.domain.errors import DomainError, InvalidArgument
from pacs_grpc.services.context import CallContext

_log = logging.getLogger("pacs_grpc.rpc")

REQUEST_ID_HEADER = "x-request-id"
_PROBE_PREFIX = "/grpc.health.v1.Health/"
_MAX_REQUEST_ID_LENGTH = 128


class RpcRecorder(Protocol):
    """Where each finished RPC is counted (pacs_grpc.api.metrics.Metrics)."""

    def rpc_finished(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None: ...


@dataclass(frozen=True)
class _Edge:
    gate: AccessGate | None
    metrics: RpcRecorder | None


class _CallLog:
    """Times one RPC and logs its outcome."""

    def __init__(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        self.method = method
        self.request_id = _request_id(context)
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.error_id: str | None = None
        self._finished = False
        # Returned on every outcome so a client can quote it in a bug report.
        context.set_trailing_metadata(((REQUEST_ID_HEADER, self.request_id),))

    def finish(self, metrics: RpcRecorder | None, *, streaming_response: bool) -> None:
        """Count and log the outcome; once, whichever comes first: the abort or the end."""
        if self._finished:
            return
        self._finished = True
        seconds = time.perf_counter() - self.started
        if metrics is not None:
            metrics.rpc_finished(self.method, self.code, None if streaming_response else seconds)
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "code": self.code.name,
            "duration_ms": round(seconds * 1000, 2),
        }
        if self.error_id is not None:
            fields["error_id"] = self.error_id
        if self.code is grpc.StatusCode.INTERNAL:
            level = logging.ERROR
        elif self.method.startswith(_PROBE_PREFIX) and self.code is grpc.StatusCode.OK:
            # Kubernetes and Envoy probe every second or so; a line each would
            # drown the calls that matter.
            level = logging.DEBUG
        else:
            level = logging.INFO
        _log.log(level, "rpc", extra=fields)


def _request_id(context: aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            cleaned = "".join(c for c in value if c.isascii() and (c.isalnum() or c in "-_."))
            if cleaned:
                return cleaned[:_MAX_REQUEST_ID_LENGTH]
    return uuid.uuid4().hex


async def _fail(
    call: _CallLog,
    context: aio.ServicerContext[Any, Any],
    error: Exception,
    settled: Callable[[], None],
) -> None:
    """Abort the RPC for an exception (status from _status_of); always raises.

    `settled` runs just before the status goes out: grpc's abort sends it at once, so a
    client could otherwise read the metrics before they count its call.
    """
    call.code = _status_of(error)
    if isinstance(error, NotImplementedError):
        settled()
        # The generated base servicers answer this way for an RPC with no
        # implementation; that is UNIMPLEMENTED, not a server fault.
        await context.abort(call.code, f"{call.method} is not implemented")
    if isinstance(error, DomainError):
        context.set_trailing_metadata(
            (
                (REQUEST_ID_HEADER, call.request_id),
                *trailing_metadata_for(error),
            )
        )
        settled()
        await context.abort(call.code, error.message)
    call.error_id = uuid.uuid4().hex[:16]
    _log.error(
        "unhandled exception",
        exc_info=error,
        extra={"request_id": call.request_id, "error_id": call.error_id, "method": call.method},
    )
    context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))
    settled()
    await context.abort(call.code, f"internal error (error id {call.error_id})")


def _settled_code(context: aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


@asynccontextmanager
async def _served(
    method: str,
    context: aio.ServicerContext[Any, Any],
    edge: _Edge,
    *,
    streaming_response: bool,
) -> AsyncIterator[_CallLog]:
    """Everything around one handler: access, limits, error mapping, audit, metrics, log."""
    gate = edge.gate
    log = _CallLog(method, context)
    call: CallContext | None = None
    permit: Permit | None = None
    audited = False
    # Waits below (a pool connection, say) end in time to answer before the deadline.
    deadline = deadlines.start(context.time_remaining())
    try:
        if gate is not None:
            call = await gate.open(method, context.invocation_metadata() or (), log.request_id)
            if call is not None:
                gate.authorize(call)
                # After authentication (limits are per user), before any use case runs.
                permit = gate.admit(call, method)
        yield log
        log.code = _settled_code(context)
    except aio.AbortError:
        log.code = _settled_code(context)
        raise
    except asyncio.CancelledError:
        log.code = grpc.StatusCode.CANCELLED
        raise
    except Exception as error:  # noqa: BLE001 - the edge maps every exception
        if gate is not None and call is not None:
            # Marked first: if the call is cancelled while the row is written, the finally
            # below must not write a second one.
            audited = True
            log.code = _status_of(error)
            # The refusal's audit row is committed before the client hears the refusal.
            await gate.close(call, log.code)
        await _fail(
            log,
            context,
            error,
            lambda: log.finish(edge.metrics, streaming_response=streaming_response),
        )
    finally:
        deadlines.reset(deadline)
        if permit is not None:
            permit.release()
        if gate is not None and call is not None and not audited:
            await gate.close(call, log.code)
        log.finish(edge.metrics, streaming_response=streaming_response)


def _status_of(error: Exception) -> grpc.StatusCode:
    if isinstance(error, DomainError):
        return status_for(error)
    if isinstance(error, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL


class _Unparsable:
    """Stands in for a request message the server could not parse.

    A deserializer that raises makes grpc answer before any interceptor runs, with a
    status the client cannot act on; a message nested past protobuf's recursion limit
    is a client's mistake and gets INVALID_ARGUMENT from the edge like any other.
    """


_UNPARSABLE = _Unparsable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    parse = deserializer

    def tolerant(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - DecodeError, RecursionError: all the client's bytes
            return _UNPARSABLE

    return tolerant


def _refuse_unparsable() -> InvalidArgument:
    return InvalidArgument(
        "request",
        "is not a valid message: malformed, or nested deeper than protobuf allows",
    )


async def _parsed(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _UNPARSABLE:
            raise _refuse_unparsable()
        yield request


def _wrap_call(
    method: str, behaviour: Callable[..., Any], edge: _Edge, *, request_streaming: bool
) -> Callable[..., Any]:
    async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        async with _served(method, context, edge, streaming_response=False):
            if request_streaming:
                request = _parsed(request)
            elif request is _UNPARSABLE:
                raise _refuse_unparsable()
            response = behaviour(request, context)
            if inspect.isawaitable(response):
                response = await response
            return response

    return call


def _wrap_stream(
    method: str,
    behaviour: Callable[..., AsyncIterator[Any]],
    edge: _Edge,
    *,
    request_streaming: bool,
) -> Callable[..., Any]:
    async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async with _served(method, context, edge, streaming_response=True):
            if request_streaming:
                request = _parsed(request)
            elif request is _UNPARSABLE:
                raise _refuse_unparsable()
            async for response in behaviour(request, context):
                yield response

    return stream


def _wrap(
    method: str, behaviour: Callable[..., Any], edge: _Edge, *, request_streaming: bool = False
) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):
        return _wrap_stream(method, behaviour, edge, request_streaming=request_streaming)
    return _wrap_call(method, behaviour, edge, request_streaming=request_streaming)


# The stubs make ServerInterceptor generic; at run time it is not subscriptable.
if TYPE_CHECKING:
    _ServerInterceptor = aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = aio.ServerInterceptor


class EdgeInterceptor(_ServerInterceptor):
    """Access, limits, error mapping, audit, metrics and one log line for every RPC."""

    def __init__(
        self, gate: AccessGate | None = None, *, metrics: RpcRecorder | None = None
    ) -> None:
        self._edge = _Edge(gate, metrics)
        # The servicers' handlers never change once the server runs, so each method's
        # wrapper is built on its first call and reused, not rebuilt per call.
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap_handler(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap(method, handler.unary_unary, self._edge), **kwargs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap(method, handler.unary_stream, self._edge), **kwargs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap(method, handler.stream_unary, self._edge, request_streaming=True), **kwargs
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap(method, handler.stream_stream, self._edge, request_streaming=True),
                **kwargs,
            )
        return handler
