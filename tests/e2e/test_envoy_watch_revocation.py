"""Revocation reaches WatchAnnotations streams opened over gRPC-web, through the real Envoy.

Envoy here fronts a server of its own with no clock-skew leeway (OIDC_LEEWAY_SECONDS=0), so
that a token stops being valid at its `exp`; rechecks run at the default interval.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import urllib3
from google.protobuf import struct_pb2
from pacs.v1 import annotation_pb2, annotation_pb2_grpc, identity_pb2, identity_pb2_grpc

from pacs_devstack.envoy import EnvoyProcess
from pacs_devstack.issuer import DevIssuer
from pacs_devstack.ports import free_port
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from pacs_grpc.edge.envoy_config import EnvoyAssets, EnvoySettings
from tests.support.grpc_web import GrpcWebClient, ServerStream

pytestmark = pytest.mark.slow

WATCH = "/pacs.v1.AnnotationService/WatchAnnotations"
REVOCATION_BOUND_SECONDS = 5.0


@pytest.fixture(scope="module")
def strict_server(live_stack: LocalStack, artifacts_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    server = ServerProcess(
        {**live_stack.server_environment(port), "OIDC_LEEWAY_SECONDS": "0"},
        port,
        log_path=artifacts_dir / "envoy-watch-revocation-server.log",
    )
    server.start()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def strict_edge(
    live_stack: LocalStack,
    strict_server: ServerProcess,
    scratch_dir: Callable[[str], Path],
    envoy_assets: EnvoyAssets,
    artifacts_dir: Path,
) -> Iterator[EnvoyProcess]:
    settings = dataclasses.replace(
        live_stack.edge_settings(base=EnvoySettings()), upstream_port=strict_server.port
    )
    envoy = EnvoyProcess(
        settings,
        scratch_dir("envoy-watch-revocation"),
        assets=envoy_assets,
        log_path=artifacts_dir / "envoy-watch-revocation.log",
    )
    envoy.start()
    try:
        yield envoy
    finally:
        envoy.stop()


@pytest.fixture(scope="module")
def stubs(
    strict_server: ServerProcess,
) -> Iterator[
    tuple[identity_pb2_grpc.IdentityServiceStub, annotation_pb2_grpc.AnnotationServiceStub]
]:
    # Setting up goes straight to the server; only the watching goes through Envoy.
    with grpc.insecure_channel(strict_server.address) as channel:
        yield (
            identity_pb2_grpc.IdentityServiceStub(channel),
            annotation_pb2_grpc.AnnotationServiceStub(channel),
        )


@pytest.fixture
def web(strict_edge: EnvoyProcess, http: urllib3.PoolManager) -> GrpcWebClient:
    return GrpcWebClient(strict_edge.url, http)


Stubs = tuple[identity_pb2_grpc.IdentityServiceStub, annotation_pb2_grpc.AnnotationServiceStub]


def _auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


class Scene:
    """A project with an annotator, and a viewer who watches it."""

    def __init__(self, stubs: Stubs, issuer: DevIssuer, unique: Callable[[str], str]) -> None:
        identity, self._annotations = stubs
        self.owner = issuer.mint(unique("owner"), realm_roles=["pacs-admin"])
        self.writer = issuer.mint(unique("writer"))
        self.viewer_name = unique("viewer")
        self.viewer = issuer.mint(self.viewer_name)
        self.project_id = identity.CreateProject(
            identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name=unique("web"))),
            metadata=_auth(self.owner),
            timeout=10,
        ).project.id
        self.viewer_id = self._member(identity, self.viewer, identity_pb2.PROJECT_ROLE_VIEWER)
        self._member(identity, self.writer, identity_pb2.PROJECT_ROLE_ANNOTATOR)
        self.study = f"1.2.826.{uuid.uuid4().int % 10**10}"

    def _member(
        self,
        identity: identity_pb2_grpc.IdentityServiceStub,
        token: str,
        role: identity_pb2.ProjectRole.ValueType,
    ) -> int:
        user_id = identity.Login(
            identity_pb2.LoginRequest(), metadata=_auth(token), timeout=10
        ).user.id
        identity.AddProjectMember(
            identity_pb2.AddProjectMemberRequest(
                project_id=self.project_id, user_id=user_id, role=role
            ),
            metadata=_auth(self.owner),
            timeout=10,
        )
        return user_id

    def create(self) -> int:
        data = struct_pb2.Struct()
        data.update({"x": 1})
        return self._annotations.CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(
                annotation=annotation_pb2.Annotation(
                    project_id=self.project_id,
                    study_uid=self.study,
                    annotation_type="point",
                    annotation_data=data,
                )
            ),
            metadata=_auth(self.writer),
            timeout=10,
        ).annotation.id

    def watch_live(self, web: GrpcWebClient, token: str) -> ServerStream:
        """A stream proven live: two writes before it, replayed from event 1, and the
        second one read (replay, then live, with no gap between)."""
        self.create()
        anchor = self.create()
        stream = web.server_stream(
            WATCH,
            annotation_pb2.WatchAnnotationsRequest(
                project_id=self.project_id, study_uid=self.study, after_event_id=1
            ),
            metadata={"authorization": f"Bearer {token}"},
            read_timeout=REVOCATION_BOUND_SECONDS + 5,
        )
        assert stream.reply.http_status == 200
        while True:
            event = stream.next_message(annotation_pb2.WatchAnnotationsResponse)
            assert event is not None, f"stream ended: {stream.reply.trailers}"
            if event.annotation_id == anchor:
                return stream


def _ended(stream: ServerStream) -> float:
    """Reads to the stream's trailers; the wall-clock time they arrived."""
    while stream.next_message(annotation_pb2.WatchAnnotationsResponse) is not None:
        pass
    return time.time()


def test_a_removed_viewers_grpc_web_stream_ends_with_not_found_within_five_seconds(
    stubs: Stubs, web: GrpcWebClient, issuer: DevIssuer, unique: Callable[[str], str]
) -> None:
    scene = Scene(stubs, issuer, unique)
    with scene.watch_live(web, scene.viewer) as stream:
        stubs[0].RemoveProjectMember(
            identity_pb2.RemoveProjectMemberRequest(
                project_id=scene.project_id, user_id=scene.viewer_id
            ),
            metadata=_auth(scene.owner),
            timeout=10,
        )
        removed_at = time.time()
        ended_at = _ended(stream)
    assert stream.reply.grpc_status == grpc.StatusCode.NOT_FOUND.value[0]
    assert stream.reply.grpc_message == "project not found"
    assert ended_at - removed_at < REVOCATION_BOUND_SECONDS


def test_a_grpc_web_stream_ends_with_unauthenticated_when_its_token_expires(
    stubs: Stubs, web: GrpcWebClient, issuer: DevIssuer, unique: Callable[[str], str]
) -> None:
    scene = Scene(stubs, issuer, unique)
    exp = int(time.time()) + 4
    short = issuer.mint(scene.viewer_name, extra_claims={"exp": exp})
    with scene.watch_live(web, short) as stream:
        assert time.time() < exp, "the stream must be live before the token expires"
        ended_at = _ended(stream)
    assert stream.reply.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert stream.reply.grpc_message == "token expired"
    # At exp, not at a later recheck tick (the default tick is 2 s).
    assert exp <= ended_at < exp + 1.5
