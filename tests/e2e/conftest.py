"""The real Envoy in front of the session's server, and clients that call through it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3

from pacs_grpc.devstack.envoy import EnvoyProcess
from pacs_grpc.devstack.issuer import DevIssuer
from pacs_grpc.devstack.stack import LocalStack
from pacs_grpc.edge.envoy_config import EnvoyAssets
from tests.support.grpc_web import GrpcWebClient
from tests.support.rest import RestClient

# The origin of the browser page the tests pretend to be; any other is refused.
ALLOWED_ORIGIN = "http://viewer.example:3000"


@pytest.fixture(scope="session")
def envoy_assets() -> EnvoyAssets:
    """The template, descriptor set and OpenAPI document the wheel ships (deploy/envoy)."""
    return EnvoyAssets.shipped()


@pytest.fixture(scope="session")
def allowed_origin() -> str:
    return ALLOWED_ORIGIN


@pytest.fixture(scope="session")
def edge(
    live_stack: LocalStack, envoy_assets: EnvoyAssets, artifacts_dir: Path
) -> Iterator[EnvoyProcess]:
    """Envoy with production's configuration (default limits) in front of `live_stack`."""
    envoy = live_stack.start_envoy(
        cors_allowed_origins=(ALLOWED_ORIGIN,),
        assets=envoy_assets,
        log_path=artifacts_dir / "envoy.log",
    )
    try:
        yield envoy
    finally:
        live_stack.stop_envoy()


@pytest.fixture(scope="session")
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=30), retries=False)
    try:
        yield pool
    finally:
        pool.clear()


@pytest.fixture
def rest(edge: EnvoyProcess, http: urllib3.PoolManager) -> RestClient:
    return RestClient(edge.url, http)


@pytest.fixture
def grpc_web(edge: EnvoyProcess, http: urllib3.PoolManager) -> GrpcWebClient:
    return GrpcWebClient(edge.url, http)


@pytest.fixture(scope="session")
def issuer(live_stack: LocalStack) -> DevIssuer:
    assert live_stack.issuer is not None
    return live_stack.issuer


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test (or earlier run on the same database) has used."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"
