"""Envoy's own refusals: the rate limit, the body size limit, and a server it cannot reach.

Each runs on an Envoy of its own with small settings, in front of the session's server.
The rate limit keeps a bucket per token and one per client address for calls without a
token; every test here draws from buckets of its own (new users), and only one test
spends the tests' address's anonymous bucket.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import urllib3
from pacs.v1 import identity_pb2, identity_pb2_grpc, mask_pb2, mask_pb2_grpc

from pacs_devstack.envoy import EnvoyProcess
from pacs_devstack.issuer import DevIssuer
from pacs_devstack.ports import free_port
from pacs_devstack.stack import LocalStack
from pacs_grpc.edge.envoy_config import EnvoyAssets, EnvoySettings
from tests.support.grpc_web import GrpcWebClient
from tests.support.png import png
from tests.support.rest import RestClient

pytestmark = pytest.mark.slow

BURST = 3
ANONYMOUS_BURST = 2
REFILL_SECONDS = 3600  # nothing refills during the test
BODY_LIMIT = 64 * 1024


def _start(
    live_stack: LocalStack,
    scratch_dir: Callable[[str], Path],
    assets: EnvoyAssets,
    artifacts_dir: Path,
    name: str,
    base: EnvoySettings,
    *,
    upstream_port: int | None = None,
) -> Iterator[EnvoyProcess]:
    settings = live_stack.edge_settings(base=base)
    if upstream_port is not None:
        settings = dataclasses.replace(settings, upstream_port=upstream_port)
    envoy = EnvoyProcess(
        settings, scratch_dir(name), assets=assets, log_path=artifacts_dir / f"{name}.log"
    )
    envoy.start(wait_for_upstream=upstream_port is None)
    try:
        yield envoy
    finally:
        envoy.stop()


@pytest.fixture(scope="module")
def rate_limited_edge(
    live_stack: LocalStack,
    scratch_dir: Callable[[str], Path],
    envoy_assets: EnvoyAssets,
    artifacts_dir: Path,
) -> Iterator[EnvoyProcess]:
    base = EnvoySettings(
        rate_limit_burst=BURST,
        rate_limit_requests=1,
        rate_limit_interval_seconds=REFILL_SECONDS,
        anonymous_rate_limit_burst=ANONYMOUS_BURST,
        anonymous_rate_limit_requests=1,
    )
    yield from _start(
        live_stack, scratch_dir, envoy_assets, artifacts_dir, "envoy-rate-limited", base
    )


@pytest.fixture(scope="module")
def small_body_edge(
    live_stack: LocalStack,
    scratch_dir: Callable[[str], Path],
    envoy_assets: EnvoyAssets,
    artifacts_dir: Path,
) -> Iterator[EnvoyProcess]:
    base = EnvoySettings(max_request_bytes=BODY_LIMIT)
    yield from _start(
        live_stack, scratch_dir, envoy_assets, artifacts_dir, "envoy-small-body", base
    )


@pytest.fixture(scope="module")
def orphaned_edge(
    live_stack: LocalStack,
    scratch_dir: Callable[[str], Path],
    envoy_assets: EnvoyAssets,
    artifacts_dir: Path,
) -> Iterator[EnvoyProcess]:
    """An Envoy whose gRPC server is not there (nothing listens on its port)."""
    yield from _start(
        live_stack,
        scratch_dir,
        envoy_assets,
        artifacts_dir,
        "envoy-orphaned",
        EnvoySettings(),
        upstream_port=free_port(),
    )


def test_over_the_rate_limit_every_protocol_gets_429_and_a_retry_hint(
    rate_limited_edge: EnvoyProcess, http: urllib3.PoolManager, issuer: DevIssuer
) -> None:
    token = issuer.mint("busy")
    rest = RestClient(rate_limited_edge.url, http)
    statuses = [rest.call("GET", "/api/users/me", token=token).status for _ in range(BURST)]
    assert statuses == [200] * BURST

    refused = rest.call("GET", "/api/users/me", token=token)
    assert refused.status == 429
    assert refused.json()["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert refused.headers["retry-after"] == str(REFILL_SECONDS)
    assert "x-envoy-upstream-service-time" not in refused.headers

    web = GrpcWebClient(rate_limited_edge.url, http).unary(
        "/pacs.v1.IdentityService/GetCurrentUser",
        identity_pb2.GetCurrentUserRequest(),
        metadata={"authorization": f"Bearer {token}"},
    )
    # gRPC-web keeps the HTTP status; its grpc-status is HTTP 429's gRPC mapping.
    assert web.http_status == 429
    assert web.grpc_status == grpc.StatusCode.UNAVAILABLE.value[0]
    assert web.headers["retry-after"] == str(REFILL_SECONDS)

    with grpc.insecure_channel(rate_limited_edge.grpc_address) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetCurrentUser(
                identity_pb2.GetCurrentUserRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
    error = raised.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # ASCII metadata arrives as str, whatever the stubs say.
    trailers: dict[str, object] = {item.key: item.value for item in error.trailing_metadata()}
    assert trailers["retry-after"] == str(REFILL_SECONDS)


def test_one_callers_flood_leaves_other_callers_served(
    rate_limited_edge: EnvoyProcess,
    http: urllib3.PoolManager,
    issuer: DevIssuer,
    unique: Callable[[str], str],
) -> None:
    flooder, neighbour = issuer.mint(unique("flooder")), issuer.mint(unique("neighbour"))
    rest = RestClient(rate_limited_edge.url, http)
    statuses = [rest.call("GET", "/api/users/me", token=flooder).status for _ in range(BURST + 2)]
    assert statuses == [200] * BURST + [429, 429]

    # Another user, through every protocol: the flood cost them nothing.
    with grpc.insecure_channel(rate_limited_edge.grpc_address) as channel:
        reply = identity_pb2_grpc.IdentityServiceStub(channel).GetCurrentUser(
            identity_pb2.GetCurrentUserRequest(),
            metadata=(("authorization", f"Bearer {neighbour}"),),
            timeout=10,
        )
    assert reply.user.username.startswith("neighbour-")
    web = GrpcWebClient(rate_limited_edge.url, http).unary(
        "/pacs.v1.IdentityService/GetCurrentUser",
        identity_pb2.GetCurrentUserRequest(),
        metadata={"authorization": f"Bearer {neighbour}"},
    )
    assert web.http_status == 200
    assert web.grpc_status == grpc.StatusCode.OK.value[0]
    assert rest.call("GET", "/api/users/me", token=neighbour).status == 200
    # Their own bucket is as large as anyone's, and no larger.
    assert rest.call("GET", "/api/users/me", token=neighbour).status == 429
    assert rest.call("GET", "/api/users/me", token=flooder).status == 429


def _forged(token: str) -> str:
    """The same header and claims (so the same `sub`) under a signature of the forger's own."""
    header, payload, signature = token.split(".")
    fake = base64.urlsafe_b64encode(hashlib.sha256(signature.encode()).digest() * 8)
    return f"{header}.{payload}.{fake.rstrip(b'=').decode()}"


def test_a_token_copying_someones_subject_cannot_empty_their_bucket(
    rate_limited_edge: EnvoyProcess,
    http: urllib3.PoolManager,
    issuer: DevIssuer,
    unique: Callable[[str], str],
) -> None:
    victim = issuer.mint(unique("victim"))
    rest = RestClient(rate_limited_edge.url, http)
    forged = _forged(victim)
    statuses = [rest.call("GET", "/api/users/me", token=forged).status for _ in range(BURST + 1)]
    # The server refuses the forgery; Envoy limits it in a bucket of its own.
    assert statuses == [401] * BURST + [429]
    assert [rest.call("GET", "/api/users/me", token=victim).status for _ in range(BURST)] == [
        200
    ] * BURST


def _unsigned_token(claims: dict[str, object]) -> str:
    def segment(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{segment({'alg': 'RS256', 'typ': 'JWT'})}.{segment(claims)}."


def test_calls_without_a_token_share_a_small_bucket_per_client_address(
    rate_limited_edge: EnvoyProcess,
    http: urllib3.PoolManager,
    issuer: DevIssuer,
    unique: Callable[[str], str],
) -> None:
    rest = RestClient(rate_limited_edge.url, http)
    statuses = [rest.call("GET", "/api/users/me").status for _ in range(ANONYMOUS_BURST + 1)]
    assert statuses == [401] * ANONYMOUS_BURST + [429]
    refused = rest.call("GET", "/api/users/me")
    assert refused.status == 429
    assert refused.json()["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]

    # Not a way around it: an address of the caller's choosing, or a token Envoy cannot
    # read (not a JWT, no signature, no subject), all count as this address without one.
    spoofed = [
        rest.call("GET", "/api/users/me", headers={"x-forwarded-for": f"198.51.100.{i}"}).status
        for i in range(3)
    ]
    assert spoofed == [429, 429, 429]
    for token in (
        "not-a-jwt",
        _unsigned_token({"sub": unique("nobody")}),
        _unsigned_token({"name": "no subject"}) + "c2ln",
    ):
        assert rest.call("GET", "/api/users/me", token=token).status == 429, token

    # A caller with a token is served meanwhile, from the same address.
    assert rest.call("GET", "/api/users/me", token=issuer.mint(unique("signed-in"))).status == 200


def test_a_rest_body_over_the_limit_is_413_with_a_json_status(
    small_body_edge: EnvoyProcess, http: urllib3.PoolManager, issuer: DevIssuer
) -> None:
    rest = RestClient(small_body_edge.url, http)
    token = issuer.mint("big-body")
    big = {"name": "x", "description": "d" * BODY_LIMIT}
    reply = rest.call("POST", "/api/projects", token=token, body=big)
    assert reply.status == 413
    assert reply.json()["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "x-envoy-upstream-service-time" not in reply.headers
    # Under the limit the same call reaches the server (which refuses a non-admin).
    small = rest.call("POST", "/api/projects", token=token, body={"name": "x"})
    assert small.status == 403


def test_a_mask_push_streams_past_the_body_limit(
    small_body_edge: EnvoyProcess,
    http: urllib3.PoolManager,
    issuer: DevIssuer,
    unique: Callable[[str], str],
) -> None:
    admin = issuer.mint(unique("pusher"), realm_roles=["pacs-admin"])
    rest = RestClient(small_body_edge.url, http)
    project = rest.ok("POST", "/api/projects", token=admin, body={"name": unique("push")})
    annotation = rest.ok(
        "POST",
        "/api/annotations",
        token=admin,
        body={
            "project_id": project["project"]["id"],
            "study_uid": "1.2.840.3",
            "annotation_type": "segmentation",
            "annotation_data": {},
        },
    )["annotation"]
    annotation_id = int(annotation["id"])
    group = rest.ok(
        "POST",
        "/api/annotations/{annotation_id}/mask-groups",
        annotation_id=annotation_id,
        token=admin,
        body={"slice_count": 3},
    )["mask_group"]
    images = [png(16, 16, seed, padding=BODY_LIMIT) for seed in range(3)]

    def messages() -> Iterator[mask_pb2.PushMasksRequest]:
        yield mask_pb2.PushMasksRequest(
            target=mask_pb2.PushTarget(annotation_id=annotation_id, group_id=int(group["id"]))
        )
        for index, image in enumerate(images):
            yield mask_pb2.PushMasksRequest(
                slice=mask_pb2.PushSliceHeader(
                    slice_index=index,
                    content_type="image/png",
                    size_bytes=len(image),
                    width=16,
                    height=16,
                    md5=hashlib.md5(image).hexdigest(),
                )
            )
            yield mask_pb2.PushMasksRequest(chunk=image)

    with grpc.insecure_channel(small_body_edge.grpc_address) as channel:
        reply = mask_pb2_grpc.MaskServiceStub(channel).PushMasks(
            messages(), metadata=(("authorization", f"Bearer {admin}"),), timeout=60
        )
    assert reply.bytes_received == sum(len(i) for i in images) > 3 * BODY_LIMIT
    assert reply.mask_group.status == mask_pb2.MASK_GROUP_STATUS_COMPLETE


def test_a_server_envoy_cannot_reach_is_503_unavailable_as_json(
    orphaned_edge: EnvoyProcess, http: urllib3.PoolManager, issuer: DevIssuer
) -> None:
    assert not orphaned_edge.upstream_healthy()
    token = issuer.mint("nobody-home")
    reply = RestClient(orphaned_edge.url, http).call("GET", "/api/users/me", token=token)
    assert reply.status == 503
    assert reply.json()["code"] == grpc.StatusCode.UNAVAILABLE.value[0]

    web = GrpcWebClient(orphaned_edge.url, http).unary(
        "/pacs.v1.IdentityService/GetCurrentUser",
        identity_pb2.GetCurrentUserRequest(),
        metadata={"authorization": f"Bearer {token}"},
    )
    assert web.grpc_status == grpc.StatusCode.UNAVAILABLE.value[0]
