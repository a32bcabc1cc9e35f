"""A local stand-in for Keycloak: one realm's signing keys, its JWKS endpoint and tokens.

Local development and the tests have no Keycloak. This issuer signs tokens shaped
like Keycloak access tokens with a key kept on disk, and serves the public half
at the path Keycloak uses, so the server verifies them exactly as it would
verify Keycloak's. It is for loopback use only: anyone who can read the key
file can mint tokens.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm
from jwt.utils import base64url_encode

from pacs_grpc import config

# The `iss` claim: an identity, never fetched. `pacs-grpc serve` trusts it only in development.
DEV_ISSUER = config.DEV_ISSUER
DEV_AUDIENCE = "pacs-api"
KEY_FILE = "signing-key.pem"
CERTS_PATH_SUFFIX = "/protocol/openid-connect/certs"

_REALM_PATH = urlsplit(DEV_ISSUER).path


class DevIssuer:
    def __init__(self, key_dir: Path) -> None:
        private_key = _load_or_create_key(key_dir / KEY_FILE)
        # Signing key first, as Keycloak lists its active key; rotated-out keys
        # stay published so tokens they signed keep verifying.
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = [(_thumbprint(private_key), private_key)]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def kid(self) -> str:
        """The `kid` of the key that signs new tokens."""
        return self._keys[0][0]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(kid, key) for kid, key in self._keys]}

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the JWKS over HTTP on a daemon thread; returns the JWKS URL."""
        if self._server is not None:
            raise RuntimeError("the dev issuer is already serving")
        server = ThreadingHTTPServer((host, port), _handler_for(self))
        server.daemon_threads = True
        thread = threading.Thread(
            # A short poll makes stop() quick; the default would add half a second.
            target=functools.partial(server.serve_forever, poll_interval=0.05),
            name="dev-issuer-jwks",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        url_host = "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104 - compared, not bound
        return f"http://{url_host}:{server.server_address[1]}{_REALM_PATH}{CERTS_PATH_SUFFIX}"

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def claims(
        self,
        username: str,
        *,
        realm_roles: Sequence[str] = (),
        client_roles: Mapping[str, Sequence[str]] | None = None,
        ttl_seconds: int = 3600,
        client_id: str = "pacs-cli",
        email: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The payload `mint` signs; `extra_claims` override it, and None drops a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "exp": now + ttl_seconds,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "iss": DEV_ISSUER,
            "aud": [DEV_AUDIENCE, "account"],
            "sub": subject_for(username),
            "typ": "Bearer",
            "azp": client_id,
            "scope": "openid profile email",
            "preferred_username": username,
            "email": email if email is not None else f"{username}@example.test",
            "email_verified": True,
            "name": username.title(),
            "realm_access": {"roles": list(realm_roles)},
            "resource_access": {
                client: {"roles": list(roles)} for client, roles in (client_roles or {}).items()
            },
        }
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def mint(
        self,
        username: str,
        *,
        realm_roles: Sequence[str] = (),
        client_roles: Mapping[str, Sequence[str]] | None = None,
        ttl_seconds: int = 3600,
        client_id: str = "pacs-cli",
        email: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """An access token signed with RS256 by the current key.

        `headers` replace header fields literally (None drops one) without
        changing how the token is signed, so tests can forge any header.
        """
        claims = self.claims(
            username,
            realm_roles=realm_roles,
            client_roles=client_roles,
            ttl_seconds=ttl_seconds,
            client_id=client_id,
            email=email,
            extra_claims=extra_claims,
        )
        header: dict[str, Any] = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        for name, value in (headers or {}).items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        return sign_rs256(header, claims, self._keys[0][1])

    def rotate(self) -> str:
        """A new key signs from now on; both are published. In memory only (for tests)."""
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = _thumbprint(private_key)
        self._keys = [(kid, private_key), *self._keys]
        return kid


def subject_for(username: str) -> str:
    """The same user always gets the same id, as a Keycloak user keeps theirs."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{DEV_ISSUER}/{username}"))


def sign_rs256(header: Mapping[str, Any], claims: Mapping[str, Any], key: rsa.RSAPrivateKey) -> str:
    """A compact JWS of exactly this header and payload, signed with RS256."""
    signing_input = b".".join(
        base64url_encode(json.dumps(part, separators=(",", ":")).encode())
        for part in (header, claims)
    )
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + base64url_encode(signature)).decode("ascii")


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if not path.exists():
        _create_key(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError(f"{path} does not hold an RSA private key")
    return key


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written whole under a temporary name, then linked into place: link fails if
    # another process created the key meanwhile, and then both use that one.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _public_numbers_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    return RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)


def _thumbprint(key: rsa.RSAPrivateKey) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace."""
    jwk = _public_numbers_jwk(key)
    required = {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
    return base64url_encode(hashlib.sha256(canonical).digest()).decode("ascii")


def _public_jwk(kid: str, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = _public_numbers_jwk(key)
    return {"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig", "n": jwk["n"], "e": jwk["e"]}


def _handler_for(issuer: DevIssuer) -> type[BaseHTTPRequestHandler]:
    class JwksHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not urlsplit(self.path).path.endswith(CERTS_PATH_SUFFIX):
                self.send_error(404)
                return
            body = json.dumps(issuer.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Keep the test and `make run` output clean; requests carry no news.
            return

    return JwksHandler
