"""Generated REST requests from the OpenAPI document, through the real Envoy with a valid token.

No generated request may get a 5xx or a leaked exception text. Schemathesis derives the
requests from deploy/envoy/openapi.json, the document Envoy serves: `make test` sends a
sample, `make soak` ten times as many (REST_FUZZ_REQUESTS).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from pacs_devstack.envoy import EnvoyProcess
from pacs_devstack.issuer import DevIssuer
from tests.support.users import ADMIN_ROLE

OPENAPI = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "openapi.json"
schema = schemathesis.openapi.from_path(OPENAPI)
OPERATIONS = 24
PER_OPERATION = max(5, int(os.environ.get("REST_FUZZ_REQUESTS", "240")) // OPERATIONS)
LEAKS = re.compile(
    r"Traceback|File \"|\.py\b|psycopg|Exception|sqlstate|select |insert |/work/", re.IGNORECASE
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bearer(issuer: DevIssuer) -> dict[str, str]:
    return {"authorization": f"Bearer {issuer.mint('rest-fuzzer', realm_roles=[ADMIN_ROLE])}"}


@schema.parametrize()
@settings(
    max_examples=PER_OPERATION, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
def test_no_generated_request_gets_a_server_error(
    case: schemathesis.Case[Any], edge: EnvoyProcess, bearer: dict[str, str]
) -> None:
    response = case.call(base_url=edge.url, headers=bearer, timeout=20)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
    assert not LEAKS.search(response.text), response.text[:300]
