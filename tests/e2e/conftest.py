"""The real Envoy in front of the session's server, and clients that call through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3

from pacs_devstack.envoy import EnvoyProcess
from pacs_devstack.stack import LocalStack
from pacs_grpc.edge.envoy_config import EnvoyAssets
from tests.support.grpc_web import GrpcWebClient
from tests.support.rest import RestClient
from tests.support.users import unique_name

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


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test (or earlier run on the same database) has used."""
    return unique_name
