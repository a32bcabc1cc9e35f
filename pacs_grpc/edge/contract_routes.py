"""Envoy's routes for the contract's methods, derived from their descriptors.

A route per method that must not get the ordinary unary timeout: every stream, and every
unary call whose `(pacs.v1.rpc)` policy declares a default deadline Envoy would otherwise
cut short. The descriptors come from the generated pacs.v1 modules, so a method added to
or changed in protos/ gets its route without anybody writing one.

Routes match the gRPC path ("/pacs.v1.MaskService/PushMasks"). A REST call matches on it
too: the transcoder rewrites the path to the method's and Envoy picks the route again
(`match_incoming_request_route` is left false). gRPC-web keeps the gRPC path throughout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.descriptor import FileDescriptor

from pacs_grpc.contract import CONTRACT_FILES, declared_methods

# The template's cluster: the gRPC server.
UPSTREAM_CLUSTER: Final = "pacs_grpc"
# Envoy waits this much longer than a client's default deadline, so that the server's own
# answer (DEADLINE_EXCEEDED at worst) reaches the client instead of Envoy's 504.
DEADLINE_MARGIN_SECONDS: Final = 5
# The server sends nothing on a server stream while nothing changes (a watch lasts as long
# as the viewer is open); a stream quiet this long is cut, and clients resume it
# (WatchAnnotations with after_event_id).
QUIET_STREAM_SECONDS: Final = 3600
_FILTER_DISABLED: Final = {
    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
    "disabled": True,
}


@dataclass(frozen=True)
class ContractMethod:
    """What Envoy needs to know about one RPC."""

    path: str  # "/pacs.v1.MaskService/PushMasks"
    client_streaming: bool
    server_streaming: bool
    # The policy's default_timeout_seconds; 0 when it declares none.
    default_timeout_seconds: int

    @property
    def streaming(self) -> bool:
        return self.client_streaming or self.server_streaming

    def needs_longer_than(self, request_timeout_seconds: int) -> bool:
        """A unary call whose clients wait longer than Envoy's ordinary timeout allows."""
        return (
            not self.streaming
            and self.default_timeout_seconds > 0
            and self.default_timeout_seconds + DEADLINE_MARGIN_SECONDS > request_timeout_seconds
        )


def contract_methods(
    files: Iterable[FileDescriptor] = CONTRACT_FILES,
) -> tuple[ContractMethod, ...]:
    return tuple(
        ContractMethod(
            path=m.path,
            client_streaming=m.descriptor.client_streaming,
            server_streaming=m.descriptor.server_streaming,
            default_timeout_seconds=m.policy.default_timeout_seconds if m.policy else 0,
        )
        for m in declared_methods(files)
    )


def contract_services(files: Iterable[FileDescriptor] = CONTRACT_FILES) -> list[str]:
    """The services the transcoder serves as REST, by full name."""
    return [service.full_name for file in files for service in file.services_by_name.values()]


def method_routes(
    methods: Iterable[ContractMethod], request_timeout_seconds: int
) -> list[dict[str, Any]]:
    """Envoy routes (as JSON-ready dicts) for the methods that need their own, in order."""
    routes = []
    for method in methods:
        if method.streaming:
            routes.append(_stream_route(method))
        elif method.needs_longer_than(request_timeout_seconds):
            routes.append(_long_call_route(method))
    return routes


def _stream_route(method: ContractMethod) -> dict[str, Any]:
    # No overall limit (a push of many slices takes minutes); the client's grpc-timeout,
    # when it sends one, applies uncapped.
    action: dict[str, Any] = {
        "cluster": UPSTREAM_CLUSTER,
        "timeout": "0s",
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }
    if method.server_streaming:
        action["idle_timeout"] = f"{QUIET_STREAM_SECONDS}s"
    route: dict[str, Any] = {"name": method.path, "match": {"path": method.path}, "route": action}
    if method.client_streaming:
        # A client stream's body is its messages, each bounded by the server
        # (GRPC_MAX_RECEIVE_BYTES); buffering it whole would cap the stream instead.
        route["typed_per_filter_config"] = {"envoy.filters.http.buffer": _FILTER_DISABLED}
    return route


def _long_call_route(method: ContractMethod) -> dict[str, Any]:
    timeout = f"{method.default_timeout_seconds + DEADLINE_MARGIN_SECONDS}s"
    return {
        "name": method.path,
        "match": {"path": method.path},
        # The stream idle timeout (5 minutes unless a route says otherwise) would cut a call
        # that works that long before sending anything; the call's own timeout bounds it.
        "route": {"cluster": UPSTREAM_CLUSTER, "timeout": timeout, "idle_timeout": timeout},
    }
