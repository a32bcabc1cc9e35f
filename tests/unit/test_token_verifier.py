"""Bearer-token verification against the dev issuer's keys, with no network.

The JWKS reaches the cache through a local `fetch` that also records which URLs
were asked for, so the tests can show keys come from the configured URL only.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from pacs_devstack.issuer import DEV_AUDIENCE, DEV_ISSUER, DevIssuer, subject_for
from pacs_grpc.adapters.auth import JwksCache, TokenVerifier, bearer_token
from pacs_grpc.config import OidcSettings
from pacs_grpc.domain.errors import Unauthenticated

JWKS_URL = "http://localhost/realms/pacs-dev/protocol/openid-connect/certs"
ATTACKER_URL = "http://attacker.test/realms/pacs-dev/protocol/openid-connect/certs"
EC_KID = "ec-test-key"
SETTINGS = OidcSettings(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, jwks_url=JWKS_URL)


@dataclass(frozen=True)
class Kit:
    """Everything a case needs to forge its token."""

    issuer: DevIssuer  # the realm the verifier trusts
    attacker: DevIssuer  # a realm it does not: same shape, other key
    ec_key: ec.EllipticCurvePrivateKey  # published in the trusted JWKS under EC_KID
    public_pem: bytes  # the trusted RSA public key, as an HMAC-confusion attacker would use it

    def claims(self, **extra: Any) -> dict[str, Any]:
        return self.issuer.claims("alice", extra_claims=extra)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    issuer = DevIssuer(tmp_path_factory.mktemp("trusted"))
    public = jwt.PyJWK(issuer.jwks()["keys"][0]).key
    return Kit(
        issuer=issuer,
        attacker=DevIssuer(tmp_path_factory.mktemp("attacker")),
        ec_key=ec.generate_private_key(ec.SECP256R1()),
        public_pem=public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


class RecordingFetch:
    """Serves the trusted JWKS (plus an EC key) and records every URL asked for."""

    def __init__(self, kit: Kit) -> None:
        ec_jwk = ECAlgorithm.to_jwk(kit.ec_key.public_key(), as_dict=True)
        self.document = {
            "keys": [*kit.issuer.jwks()["keys"], {**ec_jwk, "kid": EC_KID, "use": "sig"}]
        }
        self.urls: list[str] = []

    def __call__(self, url: str, timeout: float) -> bytes:
        self.urls.append(url)
        return json.dumps(self.document).encode()


def _verifier(kit: Kit, **overrides: Any) -> tuple[TokenVerifier, RecordingFetch]:
    settings = dataclasses.replace(SETTINGS, **overrides)
    fetch = RecordingFetch(kit)
    cache = JwksCache(
        settings.jwks_url,
        cooldown_seconds=settings.jwks_cooldown_seconds,
        timeout_seconds=settings.jwks_timeout_seconds,
        fetch=fetch,
    )
    return TokenVerifier(settings, cache), fetch


# Forging helpers: each builds exactly the token bytes an attacker could send.


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: Any) -> str:
    return _b64(json.dumps(value).encode())


def _unsigned(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    return f"{_segment(header)}.{_segment(claims)}."


def _hs256(header: Mapping[str, Any], claims: Mapping[str, Any], secret: bytes) -> str:
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _tampered(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{_segment({**claims, **changes})}.{signature}"


def _flipped_signature(token: str, *, drop_last: bool = False) -> str:
    signing_input, signature = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return f"{signing_input}.{_b64(bytes(raw[:-1] if drop_last else raw))}"


def _es256(kit: Kit, kid: str) -> str:
    return jwt.encode(kit.claims(), kit.ec_key, algorithm="ES256", headers={"kid": kid})


def _without(claim: str) -> Callable[[Kit], str]:
    return lambda k: k.issuer.mint("alice", extra_claims={claim: None})


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True)
class Case:
    id: str
    token: Callable[[Kit], str]
    reason: str
    settings: Mapping[str, Any] = field(default_factory=dict)


NEGATIVE = [
    # Algorithms and keys
    Case(
        "alg none, unsigned",
        lambda k: _unsigned({"alg": "none", "typ": "JWT", "kid": k.issuer.kid}, k.claims()),
        "unsupported algorithm",
    ),
    Case(
        "alg missing",
        lambda k: k.issuer.mint("alice", headers={"alg": None}),
        "unsupported algorithm",
    ),
    Case(
        "HS256 signed with the RSA public key PEM as secret",
        lambda k: _hs256({"alg": "HS256", "kid": k.issuer.kid}, k.claims(), k.public_pem),
        "unsupported algorithm",
    ),
    Case(
        "HS256 even when misconfigured as allowed: the kid names an RSA key",
        lambda k: _hs256({"alg": "HS256", "kid": k.issuer.kid}, k.claims(), k.public_pem),
        "unsupported algorithm",
        {"algorithms": ("RS256", "HS256")},
    ),
    Case(
        "signed by another RSA key under the trusted kid",
        lambda k: k.attacker.mint("alice", headers={"kid": k.issuer.kid}),
        "bad signature",
    ),
    Case(
        "unknown kid",
        lambda k: k.issuer.mint("alice", headers={"kid": "no-such-key"}),
        "unknown signing key",
    ),
    Case("missing kid", lambda k: k.issuer.mint("alice", headers={"kid": None}), "missing key id"),
    Case("empty kid", lambda k: k.issuer.mint("alice", headers={"kid": ""}), "missing key id"),
    Case(
        "jku pointing elsewhere, with that server's key and kid",
        lambda k: k.attacker.mint("alice", headers={"jku": ATTACKER_URL}),
        "unknown signing key",
    ),
    Case(
        "x5u pointing elsewhere, signed there under the trusted kid",
        lambda k: k.attacker.mint("alice", headers={"x5u": ATTACKER_URL, "kid": k.issuer.kid}),
        "bad signature",
    ),
    Case(
        "RS256 header naming an EC key",
        lambda k: k.issuer.mint("alice", headers={"kid": EC_KID}),
        "unsupported algorithm",
        {"algorithms": ("RS256", "ES256")},
    ),
    Case(
        "ES256 header naming an RSA key",
        lambda k: _es256(k, k.issuer.kid),
        "unsupported algorithm",
        {"algorithms": ("RS256", "ES256")},
    ),
    Case(
        "ES256 when only RS256 is configured",
        lambda k: _es256(k, EC_KID),
        "unsupported algorithm",
    ),
    Case(
        "PS256 header on a key published for RS256",
        lambda k: k.issuer.mint("alice", headers={"alg": "PS256"}),
        "unsupported algorithm",
        {"algorithms": ("RS256", "PS256")},
    ),
    Case(
        "payload changed after signing",
        lambda k: _tampered(k.issuer.mint("alice"), realm_access={"roles": ["pacs-admin"]}),
        "bad signature",
    ),
    Case(
        "signature altered", lambda k: _flipped_signature(k.issuer.mint("alice")), "bad signature"
    ),
    Case(
        "signature one byte short",
        lambda k: _flipped_signature(k.issuer.mint("alice"), drop_last=True),
        "bad signature",
    ),
    # Time
    Case(
        "expired beyond the leeway",
        lambda k: k.issuer.mint("alice", extra_claims={"exp": _now() - 120}),
        "token expired",
    ),
    Case(
        "nbf in the future",
        lambda k: k.issuer.mint("alice", extra_claims={"nbf": _now() + 300}),
        "token not yet valid",
    ),
    Case(
        "iat in the future",
        lambda k: k.issuer.mint("alice", extra_claims={"iat": _now() + 300}),
        "token not yet valid",
    ),
    Case(
        "exp not a number",
        lambda k: k.issuer.mint("alice", extra_claims={"exp": "tomorrow"}),
        "malformed token",
    ),
    # Required claims
    *(
        Case(
            f"missing {claim}",
            _without(claim),
            f"missing claim: {claim}",
        )
        for claim in ("exp", "iat", "iss", "sub")
    ),
    # Issuer, audience, type, subject
    Case(
        "wrong issuer",
        lambda k: k.issuer.mint("alice", extra_claims={"iss": "http://localhost/realms/other"}),
        "wrong issuer",
    ),
    Case(
        "issuer not a string",
        lambda k: k.issuer.mint(
            "alice", extra_claims={"iss": ["http://localhost/realms/pacs-dev"]}
        ),
        "wrong issuer",
    ),
    Case(
        "wrong aud and azp",
        lambda k: k.issuer.mint("alice", client_id="other", extra_claims={"aud": "account"}),
        "wrong audience",
    ),
    Case(
        "no aud and azp another client",
        lambda k: k.issuer.mint("alice", client_id="other", extra_claims={"aud": None}),
        "wrong audience",
    ),
    Case(
        "no aud, azp matching, azp not accepted",
        lambda k: k.issuer.mint("alice", client_id=DEV_AUDIENCE, extra_claims={"aud": None}),
        "wrong audience",
        {"accept_azp_as_audience": False},
    ),
    Case(
        "aud account only, azp matching, azp not accepted",
        lambda k: k.issuer.mint("alice", client_id=DEV_AUDIENCE, extra_claims={"aud": "account"}),
        "wrong audience",
        {"accept_azp_as_audience": False},
    ),
    Case(
        "aud not a string or list",
        lambda k: k.issuer.mint("alice", extra_claims={"aud": {"pacs-api": True}}),
        "wrong audience",
    ),
    Case(
        "ID token",
        lambda k: k.issuer.mint("alice", extra_claims={"typ": "ID"}),
        "wrong token type",
    ),
    Case(
        "refresh token",
        lambda k: k.issuer.mint("alice", extra_claims={"typ": "Refresh"}),
        "wrong token type",
    ),
    Case(
        "typ not a string",
        lambda k: k.issuer.mint("alice", extra_claims={"typ": 1}),
        "wrong token type",
    ),
    Case(
        "sub not a UUID",
        lambda k: k.issuer.mint("alice", extra_claims={"sub": "alice"}),
        "invalid claim: sub",
    ),
    Case(
        "sub a UUID in braces",
        lambda k: k.issuer.mint("alice", extra_claims={"sub": "{" + subject_for("alice") + "}"}),
        "invalid claim: sub",
    ),
    Case(
        "sub not a string",
        lambda k: k.issuer.mint("alice", extra_claims={"sub": 42}),
        "invalid claim: sub",
    ),
    # Shape
    Case("empty token", lambda k: "", "malformed token"),
    Case("two segments", lambda k: k.issuer.mint("alice").rsplit(".", 1)[0], "malformed token"),
    Case("four segments", lambda k: k.issuer.mint("alice") + ".e30", "malformed token"),
    Case(
        "not base64url",
        lambda k: "eyJhbGciOiJSUzI1NiJ9!.e30.c2ln",
        "malformed token",
    ),
    Case(
        "padded base64",
        lambda k: k.issuer.mint("alice") + "==",
        "malformed token",
    ),
    Case(
        "garbage JSON header",
        lambda k: f"{_b64(b'{not json')}.{_segment(k.claims())}.c2ln",
        "malformed token",
    ),
    Case(
        "header a JSON list",
        lambda k: f"{_segment(['RS256'])}.{_segment(k.claims())}.c2ln",
        "malformed token",
    ),
    Case(
        "unsupported critical header",
        lambda k: k.issuer.mint("alice", headers={"crit": ["exp"], "exp": 1}),
        "malformed token",
    ),
    Case(
        "a validly signed 100 KB token",
        lambda k: k.issuer.mint("alice", extra_claims={"padding": "x" * 100_000}),
        "malformed token",
    ),
    Case(
        "non-ASCII characters",
        lambda k: k.issuer.mint("alice").replace(".", ".é", 1),
        "malformed token",
    ),
    Case(
        "whitespace inside",
        lambda k: k.issuer.mint("alice").replace(".", " .", 1),
        "malformed token",
    ),
]


@pytest.mark.parametrize("case", NEGATIVE, ids=[case.id for case in NEGATIVE])
async def test_refused_with_a_short_reason(kit: Kit, case: Case) -> None:
    verifier, fetch = _verifier(kit, **case.settings)
    token = case.token(kit)
    with pytest.raises(Unauthenticated) as raised:
        await verifier.verify(token)
    assert raised.value.message == case.reason
    # Keys come from the configured URL only, whatever the token names.
    assert set(fetch.urls) <= {JWKS_URL}


def test_the_corpus_is_large_enough() -> None:
    assert len(NEGATIVE) >= 25
    assert len({case.id for case in NEGATIVE}) == len(NEGATIVE)


async def test_every_principal_field_comes_from_the_token(kit: Kit) -> None:
    verifier, _ = _verifier(kit)
    token = kit.issuer.mint(
        "alice.smith",
        realm_roles=["pacs-admin", "offline_access"],
        client_roles={"pacs-api": ["reader", "writer"], "account": ["manage-account"]},
        client_id="pacs-web",
        email="alice@hospital.test",
    )
    principal = await verifier.verify(token)
    assert principal.subject == subject_for("alice.smith")
    assert principal.username == "alice.smith"
    assert principal.email == "alice@hospital.test"
    assert principal.full_name == "Alice.Smith"
    assert principal.client_id == "pacs-web"
    assert principal.realm_roles == frozenset({"pacs-admin", "offline_access"})
    assert principal.client_roles == {
        "pacs-api": frozenset({"reader", "writer"}),
        "account": frozenset({"manage-account"}),
    }


async def test_a_service_account_token_without_profile_claims(kit: Kit) -> None:
    verifier, _ = _verifier(kit)
    token = kit.issuer.mint(
        "service-account-ai-pipeline",
        client_id="ai-pipeline",
        extra_claims={"preferred_username": None, "email": None, "name": None},
    )
    principal = await verifier.verify(token)
    assert principal.username == principal.subject == subject_for("service-account-ai-pipeline")
    assert principal.email is None
    assert principal.full_name is None
    assert principal.client_id == "ai-pipeline"
    assert principal.realm_roles == frozenset()
    assert principal.client_roles == {}


async def test_malformed_role_structures_mean_no_roles(kit: Kit) -> None:
    verifier, _ = _verifier(kit)
    token = kit.issuer.mint(
        "alice",
        extra_claims={
            "realm_access": {"roles": "pacs-admin"},
            "resource_access": {
                "as-text": {"roles": "reader"},
                "as-list": ["reader"],
                "mixed": {"roles": ["reader", 7, None]},
            },
        },
    )
    principal = await verifier.verify(token)
    assert principal.realm_roles == frozenset()
    assert principal.client_roles == {"mixed": frozenset({"reader"})}


async def test_roles_absent_altogether(kit: Kit) -> None:
    verifier, _ = _verifier(kit)
    token = kit.issuer.mint(
        "alice", extra_claims={"realm_access": None, "resource_access": "everything"}
    )
    principal = await verifier.verify(token)
    assert principal.realm_roles == frozenset()
    assert principal.client_roles == {}


POSITIVE = [
    Case(
        "expired within the leeway",
        lambda k: k.issuer.mint("alice", extra_claims={"exp": _now() - 10}),
        "",
    ),
    Case(
        "iat slightly in the future (clock skew)",
        lambda k: k.issuer.mint("alice", extra_claims={"iat": _now() + 10}),
        "",
    ),
    Case(
        "aud missing, azp matching",
        lambda k: k.issuer.mint("alice", client_id=DEV_AUDIENCE, extra_claims={"aud": None}),
        "",
    ),
    Case(
        "aud account only, azp matching (Keycloak's default)",
        lambda k: k.issuer.mint("alice", client_id=DEV_AUDIENCE, extra_claims={"aud": "account"}),
        "",
    ),
    Case(
        "aud a plain string",
        lambda k: k.issuer.mint("alice", extra_claims={"aud": DEV_AUDIENCE}),
        "",
        {"accept_azp_as_audience": False},
    ),
    Case("typ lower case", lambda k: k.issuer.mint("alice", extra_claims={"typ": "bearer"}), ""),
    Case("typ absent", lambda k: k.issuer.mint("alice", extra_claims={"typ": None}), ""),
    Case(
        "ES256 with the EC key, when configured",
        lambda k: _es256(k, EC_KID),
        "",
        {"algorithms": ("RS256", "ES256")},
    ),
]


@pytest.mark.parametrize("case", POSITIVE, ids=[case.id for case in POSITIVE])
async def test_accepted(kit: Kit, case: Case) -> None:
    verifier, _ = _verifier(kit, **case.settings)
    principal = await verifier.verify(case.token(kit))
    assert principal.subject == subject_for("alice")


async def test_a_rejected_token_never_reaches_the_message(kit: Kit) -> None:
    verifier, _ = _verifier(kit)
    token = kit.issuer.mint("alice", extra_claims={"exp": _now() - 600})
    with pytest.raises(Unauthenticated) as raised:
        await verifier.verify(token)
    text = str(raised.value)
    assert token not in text
    assert all(part not in text for part in token.split("."))
    assert raised.value.__cause__ is None


async def test_a_fetch_error_that_is_not_an_outage_propagates(kit: Kit) -> None:
    def broken(url: str, timeout: float) -> bytes:
        raise RuntimeError("a bug, not an outage")

    cache = JwksCache(JWKS_URL, cooldown_seconds=60, timeout_seconds=1, fetch=broken)
    verifier = TokenVerifier(SETTINGS, cache)
    with pytest.raises(RuntimeError):
        await verifier.verify(kit.issuer.mint("alice"))


async def test_unknown_kids_refetch_once_per_cooldown(kit: Kit) -> None:
    verifier, fetch = _verifier(kit)
    for kid in ("first-unknown", "second-unknown", "third-unknown"):
        with pytest.raises(Unauthenticated, match="unknown signing key"):
            await verifier.verify(kit.issuer.mint("alice", headers={"kid": kid}))
    assert fetch.urls == [JWKS_URL]
    assert await verifier.verify(kit.issuer.mint("alice"))


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ([], "missing bearer token"),
        ([("x-request-id", "abc")], "missing bearer token"),
        ([("authorization", "Basic YWxpY2U6c2VjcmV0")], "malformed authorization header"),
        ([("authorization", "Bearer")], "malformed authorization header"),
        ([("authorization", "Bearer ")], "malformed authorization header"),
        ([("authorization", "Bearer a.b.c extra")], "malformed authorization header"),
        ([("authorization", "a.b.c")], "malformed authorization header"),
        ([("authorization", b"Bearer \xff")], "malformed authorization header"),
        (
            [("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")],
            "malformed authorization header",
        ),
    ],
    ids=[
        "no metadata",
        "no authorization",
        "basic",
        "bearer alone",
        "bearer and a space",
        "two words",
        "no scheme",
        "not ascii",
        "two headers",
    ],
)
def test_bearer_token_refused(metadata: list[tuple[str, str | bytes]], reason: str) -> None:
    with pytest.raises(Unauthenticated) as raised:
        bearer_token(metadata)
    assert raised.value.message == reason


@pytest.mark.parametrize(
    "metadata",
    [
        [("x-request-id", "r1"), ("authorization", "Bearer a.b.c")],
        [("authorization", "bearer a.b.c")],
        [("Authorization", b"Bearer a.b.c")],
    ],
)
def test_bearer_token_found(metadata: list[tuple[str, str | bytes]]) -> None:
    assert bearer_token(metadata) == "a.b.c"
