"""gRPC-web (as browsers speak it) and native gRPC through the real Envoy."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import struct_pb2
from pacs.v1 import annotation_pb2, identity_pb2, identity_pb2_grpc

from pacs_devstack.envoy import EnvoyProcess
from pacs_devstack.issuer import DevIssuer
from tests.support.grpc_web import GrpcWebClient
from tests.support.rest import RestClient

pytestmark = pytest.mark.slow

LOGIN = "/pacs.v1.IdentityService/Login"
WATCH = "/pacs.v1.AnnotationService/WatchAnnotations"
CREATED = annotation_pb2.ANNOTATION_EVENT_TYPE_CREATED


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("text", [False, True], ids=["binary", "base64-text"])
def test_a_unary_call_returns_its_message_and_an_ok_trailer(
    grpc_web: GrpcWebClient, issuer: DevIssuer, unique: Callable[[str], str], text: bool
) -> None:
    name = unique("web")
    reply = grpc_web.unary(
        LOGIN, identity_pb2.LoginRequest(), metadata=_bearer(issuer.mint(name)), text=text
    )
    assert reply.http_status == 200
    assert reply.grpc_status == 0
    login = reply.message(identity_pb2.LoginResponse)
    # The token reached the server as `authorization` metadata.
    assert login.user.username == name
    assert reply.trailers["x-request-id"]


def test_an_error_arrives_as_grpc_status_in_the_headers(
    grpc_web: GrpcWebClient, issuer: DevIssuer
) -> None:
    reply = grpc_web.unary(
        "/pacs.v1.AnnotationService/GetAnnotation",
        annotation_pb2.GetAnnotationRequest(annotation_id=9_000_000_000_001),
        metadata=_bearer(issuer.mint("web-reader")),
    )
    assert reply.http_status == 200
    assert (reply.grpc_status, reply.messages) == (grpc.StatusCode.NOT_FOUND.value[0], [])
    assert reply.grpc_message

    no_token = grpc_web.unary(LOGIN, identity_pb2.LoginRequest())
    assert no_token.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]


def test_watch_streams_an_annotation_created_while_it_is_open(
    grpc_web: GrpcWebClient, rest: RestClient, issuer: DevIssuer, unique: Callable[[str], str]
) -> None:
    admin = issuer.mint(unique("admin"), realm_roles=["pacs-admin"])
    project = rest.ok("POST", "/api/projects", token=admin, body={"name": unique("watch")})
    project_id = int(project["project"]["id"])
    study = "1.2.840.10008.77"

    def create() -> int:
        body = {
            "project_id": str(project_id),
            "study_uid": study,
            "annotation_type": "point",
            "annotation_data": {"x": 1},
        }
        return int(rest.ok("POST", "/api/annotations", token=admin, body=body)["annotation"]["id"])

    # Two writes before watching: resuming after event 1 replays at least the second, so
    # its arrival proves the stream is live (replay, then live, with no gap between).
    create()
    anchor = create()
    request = annotation_pb2.WatchAnnotationsRequest(project_id=project_id, after_event_id=1)
    with grpc_web.server_stream(WATCH, request, metadata=_bearer(admin)) as stream:
        assert stream.reply.http_status == 200
        while True:
            event = stream.next_message(annotation_pb2.WatchAnnotationsResponse)
            assert event is not None, f"stream ended: {stream.reply.trailers}"
            if event.annotation_id == anchor:
                break

        live = create()
        event = stream.next_message(annotation_pb2.WatchAnnotationsResponse)
        assert event is not None, f"stream ended: {stream.reply.trailers}"
        assert (event.annotation_id, event.event_type) == (live, CREATED)
        assert event.annotation.study_uid == study
        assert event.annotation.annotation_data == struct_pb2.Struct(
            fields={"x": struct_pb2.Value(number_value=1)}
        )


def test_native_grpc_is_served_on_the_same_port(
    edge: EnvoyProcess, issuer: DevIssuer, unique: Callable[[str], str]
) -> None:
    name = unique("h2c")
    with grpc.insecure_channel(edge.grpc_address) as channel:
        reply = identity_pb2_grpc.IdentityServiceStub(channel).Login(
            identity_pb2.LoginRequest(),
            metadata=(("authorization", f"Bearer {issuer.mint(name)}"),),
            timeout=10,
        )
    assert reply.user.username == name
