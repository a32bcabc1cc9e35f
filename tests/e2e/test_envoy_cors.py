"""CORS at the edge: what a browser page on an allowed origin may do, and one that is not."""

from __future__ import annotations

import pytest
import urllib3
from pacs.v1 import identity_pb2

from pacs_devstack.envoy import EnvoyProcess
from pacs_devstack.issuer import DevIssuer
from tests.support.grpc_web import GrpcWebClient

pytestmark = pytest.mark.slow

REFUSED_ORIGIN = "http://evil.example"


def _preflight(
    http: urllib3.PoolManager, edge: EnvoyProcess, path: str, origin: str, method: str
) -> urllib3.BaseHTTPResponse:
    return http.request(
        "OPTIONS",
        edge.url + path,
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "authorization,content-type,x-grpc-web",
        },
    )


def _listed(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


@pytest.mark.parametrize(
    ("path", "method"),
    [("/api/annotations/1", "PATCH"), ("/pacs.v1.IdentityService/Login", "POST")],
    ids=["rest", "grpc-web"],
)
def test_a_preflight_from_an_allowed_origin_is_answered_by_envoy(
    http: urllib3.PoolManager, edge: EnvoyProcess, allowed_origin: str, path: str, method: str
) -> None:
    reply = _preflight(http, edge, path, allowed_origin, method)
    assert reply.status == 200
    assert reply.headers["access-control-allow-origin"] == allowed_origin
    assert method.lower() in _listed(reply.headers.get("access-control-allow-methods"))
    assert {"authorization", "content-type", "x-grpc-web"} <= _listed(
        reply.headers.get("access-control-allow-headers")
    )
    assert "x-envoy-upstream-service-time" not in reply.headers


def test_a_preflight_from_another_origin_gets_no_permission_and_stays_at_the_edge(
    http: urllib3.PoolManager, edge: EnvoyProcess
) -> None:
    reply = _preflight(http, edge, "/api/users/me", REFUSED_ORIGIN, "GET")
    # Answered by the CORS filter itself (passed on, the transcoder would say 404) ...
    assert reply.status == 200
    # ... without Access-Control-Allow-Origin, so the browser refuses the real request.
    assert "access-control-allow-origin" not in reply.headers
    assert "x-envoy-upstream-service-time" not in reply.headers


def test_responses_to_an_allowed_origin_expose_the_grpc_status(
    grpc_web: GrpcWebClient,
    issuer: DevIssuer,
    http: urllib3.PoolManager,
    edge: EnvoyProcess,
    allowed_origin: str,
) -> None:
    token = issuer.mint("cors-reader")
    reply = grpc_web.unary(
        "/pacs.v1.IdentityService/GetCurrentUser",
        identity_pb2.GetCurrentUserRequest(),
        metadata={"origin": allowed_origin, "authorization": f"Bearer {token}"},
    )
    assert reply.headers["access-control-allow-origin"] == allowed_origin
    assert {"grpc-status", "grpc-message"} <= _listed(
        reply.headers.get("access-control-expose-headers")
    )
    rest = http.request(
        "GET",
        edge.url + "/api/users/me",
        headers={"origin": REFUSED_ORIGIN, "authorization": f"Bearer {token}"},
    )
    assert rest.status == 200
    assert "access-control-allow-origin" not in rest.headers
