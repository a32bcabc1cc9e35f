from __future__ import annotations

import base64
import hashlib
import json
import stat
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pacs_devstack.issuer import DEV_AUDIENCE, DEV_ISSUER, KEY_FILE, DevIssuer, subject_for


def _decode(issuer: DevIssuer, token: str) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKSet.from_dict(issuer.jwks())[header["kid"]]
    return jwt.decode(token, key, algorithms=["RS256"], audience=DEV_AUDIENCE, issuer=DEV_ISSUER)


def test_key_is_persisted_and_reloaded_with_the_same_kid(tmp_path: Path) -> None:
    first = DevIssuer(tmp_path)
    second = DevIssuer(tmp_path)
    assert second.kid == first.kid
    assert second.jwks() == first.jwks()
    # A token from one instance verifies with the keys the other publishes.
    assert _decode(second, first.mint("alice"))["preferred_username"] == "alice"


def test_key_file_is_private(tmp_path: Path) -> None:
    DevIssuer(tmp_path / "keys")
    mode = stat.S_IMODE((tmp_path / "keys" / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert [path.name for path in (tmp_path / "keys").iterdir()] == [KEY_FILE]


def test_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    (jwk,) = issuer.jwks()["keys"]
    members = json.dumps(
        {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(members.encode()).digest()
    assert jwk["kid"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert jwk["use"] == "sig"
    assert jwk["alg"] == "RS256"
    assert "d" not in jwk  # public half only
    assert jwt.PyJWK(jwk).key.key_size == 2048


def test_a_file_without_an_rsa_key_is_refused(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / KEY_FILE).write_bytes(pem)
    with pytest.raises(TypeError, match="RSA private key"):
        DevIssuer(tmp_path)


def test_subject_is_a_deterministic_uuid_per_username(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    alice = _decode(issuer, issuer.mint("alice"))["sub"]
    assert alice == _decode(issuer, issuer.mint("alice"))["sub"] == subject_for("alice")
    assert alice == str(uuid.uuid5(uuid.NAMESPACE_URL, f"{DEV_ISSUER}/alice"))
    assert alice != subject_for("bob")


def test_tokens_look_like_keycloak_access_tokens(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    token = issuer.mint(
        "alice",
        realm_roles=["pacs-admin"],
        client_roles={"pacs-api": ["reader"]},
        ttl_seconds=300,
        client_id="pacs-web",
    )
    claims = _decode(issuer, token)
    assert claims["iss"] == DEV_ISSUER
    assert claims["aud"] == [DEV_AUDIENCE, "account"]
    assert claims["azp"] == "pacs-web"
    assert claims["typ"] == "Bearer"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["email"] == "alice@example.test"
    assert claims["name"] == "Alice"
    assert claims["realm_access"] == {"roles": ["pacs-admin"]}
    assert claims["resource_access"] == {"pacs-api": {"roles": ["reader"]}}
    assert claims["scope"] == "openid profile email"
    uuid.UUID(claims["jti"])
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": issuer.kid}


def test_extra_claims_and_headers_override_and_none_drops(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    token = issuer.mint(
        "alice",
        extra_claims={"sub": None, "iss": "elsewhere", "custom": 1},
        headers={"kid": None, "jku": "http://elsewhere.test/certs"},
    )
    header = jwt.get_unverified_header(token)
    assert "kid" not in header
    assert header["jku"] == "http://elsewhere.test/certs"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert "sub" not in claims
    assert claims["iss"] == "elsewhere"
    assert claims["custom"] == 1


def test_rotate_signs_with_the_new_key_and_publishes_both(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    old_kid = issuer.kid
    old_token = issuer.mint("alice")
    new_kid = issuer.rotate()
    assert new_kid != old_kid
    assert issuer.kid == new_kid
    assert [key["kid"] for key in issuer.jwks()["keys"]] == [new_kid, old_kid]
    new_token = issuer.mint("alice")
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert _decode(issuer, new_token)["sub"] == _decode(issuer, old_token)["sub"]
    # Rotation is in memory: a restarted issuer signs with the persisted key again.
    assert DevIssuer(tmp_path).kid == old_kid
