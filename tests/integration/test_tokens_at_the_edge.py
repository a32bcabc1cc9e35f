"""Bad tokens at the real server: refused with a reason, before the database, never logged."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc import aio
from pacs.v1 import identity_pb2, identity_pb2_grpc

from pacs_devstack.issuer import DevIssuer, subject_for
from pacs_devstack.stack import LocalStack


@pytest.fixture(scope="module")
async def stub(live_stack: LocalStack) -> AsyncIterator[identity_pb2_grpc.IdentityServiceAsyncStub]:
    assert live_stack.server is not None
    async with aio.insecure_channel(live_stack.server.address) as channel:
        yield identity_pb2_grpc.IdentityServiceStub(channel)


def _unsigned(issuer: DevIssuer, username: str) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(issuer.claims(username))}."


def _corpus(issuer: DevIssuer, username: str) -> dict[str, tuple[str, str]]:
    """name -> (token, expected reason); the unit tests hold the full corpus."""
    return {
        "expired": (issuer.mint(username, ttl_seconds=-3600), "token expired"),
        "alg none": (_unsigned(issuer, username), "unsupported algorithm"),
        "unknown kid": (issuer.mint(username, headers={"kid": "nope"}), "unknown signing key"),
        "wrong audience": (
            issuer.mint(username, client_id="other", extra_claims={"aud": "other"}),
            "wrong audience",
        ),
        "wrong issuer": (
            issuer.mint(username, extra_claims={"iss": "https://evil.example/realms/x"}),
            "wrong issuer",
        ),
        "missing sub": (issuer.mint(username, extra_claims={"sub": None}), "missing claim: sub"),
        "garbage": ("not-a-token", "malformed token"),
        "huge": ("a" * 100_000, "malformed token"),
    }


def _count_traces(database_url: str, username: str) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        users = conn.execute(
            "select count(*) from security_user where keycloak_id = %s", [subject_for(username)]
        ).fetchone()
        audits = conn.execute(
            "select count(*) from audit_log where subject = %s", [subject_for(username)]
        ).fetchone()
    assert users is not None
    assert audits is not None
    return int(users[0]), int(audits[0])


async def test_bad_tokens_are_refused_before_the_database(
    live_stack: LocalStack, stub: identity_pb2_grpc.IdentityServiceAsyncStub
) -> None:
    assert live_stack.issuer is not None
    username = f"intruder-{uuid.uuid4().hex[:8]}"
    reasons = {}
    for name, (token, _) in _corpus(live_stack.issuer, username).items():
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.Login(
                identity_pb2.LoginRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED, name
        reasons[name] = raised.value.details()
    expected = {name: reason for name, (_, reason) in _corpus(live_stack.issuer, username).items()}
    assert reasons == expected
    assert _count_traces(live_stack.database_url, username) == (0, 0)


async def test_tokens_never_reach_the_logs(
    live_stack: LocalStack, stub: identity_pb2_grpc.IdentityServiceAsyncStub, artifacts_dir: Path
) -> None:
    assert live_stack.issuer is not None
    server_log = artifacts_dir / "live-server.log"
    # The file outlives runs: only what this test makes the server write is looked at.
    written_before = server_log.stat().st_size if server_log.exists() else 0
    username = f"logged-{uuid.uuid4().hex[:8]}"
    good = live_stack.issuer.mint(username)
    bad = live_stack.issuer.mint(username, ttl_seconds=-3600)
    await stub.Login(identity_pb2.LoginRequest(), metadata=(("authorization", f"Bearer {good}"),))
    with pytest.raises(aio.AioRpcError):
        await stub.Login(
            identity_pb2.LoginRequest(), metadata=(("authorization", f"Bearer {bad}"),)
        )
    with server_log.open("rb") as written:
        written.seek(written_before)
        log = written.read().decode(errors="replace")
    assert '"method": "/pacs.v1.IdentityService/Login"' in log
    for token in (good, bad):
        signature = token.rsplit(".", 1)[-1]
        assert signature not in log
        assert token.split(".", 1)[0] + "." + token.split(".")[1][:40] not in log
