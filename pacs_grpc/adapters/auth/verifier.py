"""Bearer tokens (Keycloak access tokens) in, a verified Principal out.

Every refusal is `Unauthenticated` with one short reason. Reasons never quote
the token or PyJWT's exception texts, which can echo token contents.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from pacs_grpc.adapters.auth.jwks import JwksCache
from pacs_grpc.config import OidcSettings
from pacs_grpc.domain.errors import Unauthenticated
from pacs_grpc.domain.identity import Principal

REQUIRED_CLAIMS = ("exp", "iat", "iss", "sub")
# How long a verified token is trusted without a new check, at most (never past its exp).
# It bounds how long a key removed from the realm's JWKS keeps working; the JWKS cache's
# own cooldown is of the same order.
VERIFIED_FOR_SECONDS = 60.0
_MAX_VERIFIED_TOKENS = 10_000

# Compact JWS: three unpadded base64url segments. The signature may be empty so
# that an unsigned (`alg: none`) token is refused for its algorithm, not its shape.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Keycloak user and service-account ids.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# The key type each algorithm family needs. PyJWT binds a PyJWK to one algorithm
# too; this check says so explicitly, whatever the JWK's own `alg` claims.
_KEY_TYPE_BY_ALG_PREFIX = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}

_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    # Subclasses before their bases: InvalidSignatureError is a DecodeError.
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuedAtError, "invalid claim: iat"),
    (InvalidSubjectError, "invalid claim: sub"),
    (InvalidJTIError, "invalid claim: jti"),
    (jwt.InvalidAlgorithmError, "unsupported algorithm"),
    (jwt.InvalidKeyError, "unusable signing key"),
    (jwt.DecodeError, "malformed token"),
)


class TokenVerifier:
    """Bearer tokens in, a verified Principal out; every refusal is Unauthenticated.

    The algorithms are the configured ones, never the token header's; the key comes from the JWKS
    cache by `kid`. A verified token is answered from memory for VERIFIED_FOR_SECONDS at most,
    never past its `exp`; refusals are checked afresh. Event-loop only: that memory is unlocked.
    """

    def __init__(
        self,
        settings: OidcSettings,
        keys: JwksCache,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._keys = keys
        # The configured list, never the token's header (RFC 8725 §2.1).
        self._algorithms = list(settings.algorithms)
        self._clock = clock
        self._verified = _VerifiedTokens()

    async def verify(self, token: str) -> Principal:
        """The token's principal; a token verified before is answered from memory.

        Full verification (parsing, a signature check, claims) was a quarter of the
        server's CPU per call, and a client sends the same token with every call.
        """
        now = self._clock()
        known = self._verified.get(token, now)
        if known is not None:
            return known
        principal, expires_at = await self._verify(token)
        self._verified.put(token, principal, until=min(expires_at, now + VERIFIED_FOR_SECONDS))
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        header = self._header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthenticated("unsupported algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("missing key id")
        key = await self._keys.key_for(kid)
        if key is None:
            raise Unauthenticated("unknown signing key")
        if key.key_type != _key_type_for(alg):
            raise Unauthenticated("unsupported algorithm")
        # Verification is one RSA/EC signature check plus a few dict lookups,
        # about 0.1 ms: inline on the event loop it costs less than the hop to
        # a worker thread would.
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    # Checked below: PyJWT cannot fall back to `azp` as Keycloak needs.
                    "verify_aud": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(_reason(error)) from None
        self._check_audience(claims)
        typ = claims.get("typ")
        # Keycloak ID tokens ("ID") and refresh tokens ("Refresh") are signed by
        # the same key and may carry our audience; only access tokens are credentials.
        if typ is not None and (not isinstance(typ, str) or typ.lower() != "bearer"):
            raise Unauthenticated("wrong token type")
        subject = claims["sub"]
        if not isinstance(subject, str) or not _UUID.fullmatch(subject):
            raise Unauthenticated("invalid claim: sub")
        expires_at = float(claims["exp"])
        valid_until = expires_at + self._settings.leeway_seconds
        return _principal(subject, claims, valid_until), expires_at

    def _header(self, token: str) -> dict[str, Any]:
        # Size first: nothing of an oversized token is parsed.
        if len(token) > self._settings.max_token_bytes or not token.isascii():
            raise Unauthenticated("malformed token")
        if not _COMPACT_JWS.fullmatch(token):
            raise Unauthenticated("malformed token")
        try:
            return jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        aud = claims.get("aud")
        if aud is None:
            audiences: list[Any] = []
        elif isinstance(aud, str):
            audiences = [aud]
        elif isinstance(aud, list):
            audiences = aud
        else:
            raise Unauthenticated("wrong audience")
        if self._settings.audience in audiences:
            return
        # Keycloak often puts only "account" in `aud` and the client in `azp`.
        if self._settings.accept_azp_as_audience and claims.get("azp") == self._settings.audience:
            return
        raise Unauthenticated("wrong audience")


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The token of the `authorization: Bearer <token>` invocation metadata."""
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if not values:
        raise Unauthenticated("missing bearer token")
    if len(values) > 1:
        raise Unauthenticated("malformed authorization header")
    value = values[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise Unauthenticated("malformed authorization header") from None
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise Unauthenticated("malformed authorization header")
    return parts[1]


class _VerifiedTokens:
    """Tokens that passed verification, by digest (the tokens themselves are not kept),
    until the time each may be trusted; the least recently used go first when full.
    Refusals are never remembered: each is checked again."""

    def __init__(self) -> None:
        self._entries: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    def get(self, token: str, now: float) -> Principal | None:
        key = _digest(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        principal, until = entry
        if until <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return principal

    def put(self, token: str, principal: Principal, *, until: float) -> None:
        self._entries[_digest(token)] = (principal, until)
        while len(self._entries) > _MAX_VERIFIED_TOKENS:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _key_type_for(alg: str) -> str | None:
    return _KEY_TYPE_BY_ALG_PREFIX.get(alg[:2])


def _reason(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"missing claim: {error.claim}"
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid token"


def _principal(subject: str, claims: Mapping[str, Any], valid_until: float) -> Principal:
    return Principal(
        subject=subject,
        username=_text(claims.get("preferred_username")) or subject,
        email=_text(claims.get("email")),
        full_name=_text(claims.get("name")),
        client_id=_text(claims.get("azp")),
        realm_roles=_roles(claims.get("realm_access")),
        client_roles=_client_roles(claims.get("resource_access")),
        valid_until=valid_until,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _roles(access: object) -> frozenset[str]:
    """`{"roles": [...]}` as Keycloak writes it; anything else means no roles."""
    if not isinstance(access, Mapping):
        return frozenset()
    roles = access.get("roles")
    if not isinstance(roles, list):
        return frozenset()
    return frozenset(role for role in roles if isinstance(role, str))


def _client_roles(resource_access: object) -> dict[str, frozenset[str]]:
    if not isinstance(resource_access, Mapping):
        return {}
    by_client: dict[str, frozenset[str]] = {}
    for client, access in resource_access.items():
        roles = _roles(access)
        if isinstance(client, str) and roles:
            by_client[client] = roles
    return by_client
