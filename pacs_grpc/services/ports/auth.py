"""Who calls: the bearer token read from the call's metadata, and verified."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from pacs_grpc.domain.identity import Principal


class Verifier(Protocol):
    """A bearer token's Principal, or Unauthenticated (adapters.auth.verifier.TokenVerifier)."""

    async def verify(self, token: str) -> Principal: ...


class TokenReader(Protocol):
    """The metadata's bearer token, or Unauthenticated (adapters.auth.verifier.bearer_token)."""

    def __call__(self, metadata: Iterable[tuple[str, str | bytes]]) -> str: ...
