"""Generated requests over every unary RPC, as an administrator (10,000 in `make soak`).

Whatever arrives, the answer is a deliberate status: never UNKNOWN or INTERNAL, never a
leaked exception text, and the server keeps serving. The module runs its own stack,
because an administrator's random deletes must not touch other tests' data.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2

from pacs_devstack.stack import LocalStack
from tests.support.fuzz_messages import message_of
from tests.support.stacks import own_stack
from tests.support.users import ADMIN_ROLE

# `make soak` sends 10,000 (and as many through REST); `make test` a quicker sample.
REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "2000"))
# Requests of one example go out together: the server sees concurrency, the run ends sooner.
BATCH = 20
# What an exception's text looks like when it escapes: a traceback, a module path, a
# psycopg or Python error class, or SQL.
LEAKS = re.compile(
    r"Traceback|File \"|\.py\b|psycopg|Error\(|Exception|sqlstate|select |insert |/work/",
    re.IGNORECASE,
)
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

pytestmark = pytest.mark.slow


def _unary_methods() -> list[tuple[str, type[Message]]]:
    methods = []
    for module in (identity_pb2, annotation_pb2, mask_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if not method.client_streaming and not method.server_streaming:
                    request_class = getattr(module, method.input_type.name)
                    methods.append((f"/{service.full_name}/{method.name}", request_class))
    return methods


METHODS = _unary_methods()


@pytest.fixture(scope="module")
def fuzz_log(artifacts_dir: Path) -> Path:
    return artifacts_dir / "fuzz-server.log"


@pytest.fixture(scope="module")
def fuzz_stack(scratch_dir: Callable[[str], Path], fuzz_log: Path) -> Iterator[LocalStack]:
    with own_stack(scratch_dir("fuzz"), server_log=fuzz_log) as stack:
        yield stack


def test_generated_requests_get_deliberate_statuses_and_no_leaked_text(
    fuzz_stack: LocalStack, fuzz_log: Path
) -> None:
    assert fuzz_stack.server is not None
    assert fuzz_stack.issuer is not None
    # The log is appended to across runs: read what this run adds.
    log_start = fuzz_log.stat().st_size
    token = fuzz_stack.issuer.mint("fuzzer", realm_roles=[ADMIN_ROLE])
    metadata = (("authorization", f"Bearer {token}"),)
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(fuzz_stack.server.address) as channel:
        calls = {
            path: channel.unary_unary(
                path,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=lambda data: data,
            )
            for path, _ in METHODS
        }
        strategies = [st.tuples(st.just(path), message_of(cls)) for path, cls in METHODS]

        @settings(
            max_examples=max(1, REQUESTS // BATCH), deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(st.lists(st.one_of(strategies), min_size=BATCH, max_size=BATCH))
        def one_batch(batch: list[tuple[str, Message]]) -> None:
            sent = [
                (path, request, calls[path].future(request, metadata=metadata, timeout=20))
                for path, request in batch
            ]
            for path, request, future in sent:
                try:
                    future.result()
                    code, details = grpc.StatusCode.OK, ""
                except grpc.RpcError as error:
                    code, details = error.code(), error.details() or ""
                seen[code.name] += 1
                assert code not in NEVER, (path, request, details)
                assert not LEAKS.search(details), (path, details)

        one_batch()
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert sum(seen.values()) >= REQUESTS
    # The run must have gone past validation, not only bounced off it.
    assert seen["OK"] > 0
    assert fuzz_stack.server.process.poll() is None
    # Bad input is the client's mistake: it is answered, and logged at INFO at most.
    with fuzz_log.open("rb") as log:
        log.seek(log_start)
        added = log.read().decode(errors="replace")
    errors = [line for line in added.splitlines() if '"level": "ERROR"' in line]
    assert errors == []
