"""Calling the server as named users with tokens from the dev issuer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from grpc import aio
from pacs.v1 import identity_pb2, identity_pb2_grpc

from pacs_devstack.issuer import DevIssuer

ADMIN_ROLE = "pacs-admin"


@dataclass(frozen=True)
class ApiUser:
    username: str
    token: str
    user_id: int

    def metadata(self, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
        pairs = [("authorization", f"Bearer {self.token}")]
        if request_id is not None:
            pairs.append(("x-request-id", request_id))
        return tuple(pairs)


async def login(
    channel: aio.Channel, issuer: DevIssuer, username: str, *, admin: bool = False
) -> ApiUser:
    """A user whose profile exists (Login creates it) with a fresh token."""
    token = issuer.mint(username, realm_roles=[ADMIN_ROLE] if admin else [])
    stub = identity_pb2_grpc.IdentityServiceStub(channel)
    reply = await stub.Login(
        identity_pb2.LoginRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
    )
    return ApiUser(username=username, token=token, user_id=reply.user.id)


def unique_name(prefix: str) -> str:
    """A name no other test, nor an earlier run on the same database, has used."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
