"""The verifier remembers tokens it verified: not longer than a minute, never past exp."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from pacs_devstack.issuer import DEV_AUDIENCE, DEV_ISSUER, DevIssuer
from pacs_grpc.adapters.auth import JwksCache, TokenVerifier
from pacs_grpc.adapters.auth import verifier as verifier_module
from pacs_grpc.config import OidcSettings
from pacs_grpc.domain.errors import Unauthenticated

JWKS_URL = "http://localhost/realms/pacs-dev/protocol/openid-connect/certs"
SETTINGS = OidcSettings(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, jwks_url=JWKS_URL)
MEMORY = verifier_module.VERIFIED_FOR_SECONDS


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Checks:
    """Counts full verifications: every signature check goes through jwt.decode."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = jwt.decode

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", counting)


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer(tmp_path)


def _verifier(issuer: DevIssuer, clock: Clock) -> TokenVerifier:
    def fetch(url: str, timeout: float) -> bytes:
        return json.dumps(issuer.jwks()).encode()

    keys = JwksCache(JWKS_URL, cooldown_seconds=60, timeout_seconds=1, fetch=fetch)
    return TokenVerifier(SETTINGS, keys, clock=clock)


async def test_a_verified_token_is_answered_from_memory_for_at_most_a_minute(
    issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks, clock = Checks(monkeypatch), Clock()
    verifier = _verifier(issuer, clock)
    token = issuer.mint("alice")
    first = await verifier.verify(token)
    clock.now += MEMORY - 1
    assert await verifier.verify(token) == first
    assert checks.count == 1
    clock.now += 2
    assert await verifier.verify(token) == first
    assert checks.count == 2


async def test_a_token_is_not_remembered_past_its_expiry(
    issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks, clock = Checks(monkeypatch), Clock()
    verifier = _verifier(issuer, clock)
    token = issuer.mint("alice", ttl_seconds=20)
    await verifier.verify(token)
    clock.now += 19
    await verifier.verify(token)
    assert checks.count == 1
    clock.now += 2  # past exp, within the minute: checked again (and refused for real later)
    await verifier.verify(token)
    assert checks.count == 2


async def test_a_refused_token_is_checked_again_every_time(
    issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks, clock = Checks(monkeypatch), Clock()
    verifier = _verifier(issuer, clock)
    expired = issuer.mint("alice", extra_claims={"exp": int(time.time()) - 600})
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="token expired"):
            await verifier.verify(expired)
    assert checks.count == 2


async def test_the_least_recently_used_token_goes_first_when_full(
    issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verifier_module, "_MAX_VERIFIED_TOKENS", 2)
    checks, clock = Checks(monkeypatch), Clock()
    verifier = _verifier(issuer, clock)
    first, second, third = (issuer.mint(f"user{n}") for n in range(3))
    for token in (first, second, first, third):  # `first` used again: `second` is oldest
        await verifier.verify(token)
    assert checks.count == 3
    await verifier.verify(first)
    await verifier.verify(third)
    assert checks.count == 3
    await verifier.verify(second)
    assert checks.count == 4
