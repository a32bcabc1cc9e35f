"""Keys travel over https only (http on loopback aside), and no redirect leads back to http.

A key set fetched in clear text could be replaced on the way, and then any token would
verify. The endpoints here are real local servers: one over TLS with a certificate made
for the test (trusted through SSL_CERT_FILE, as the system bundle would be), one plain.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pacs_devstack.issuer import DevIssuer
from pacs_grpc.adapters.auth.jwks import JwksUnavailableError, fetch_jwks, parse_jwks

TIMEOUT = 5.0

Respond = Callable[[BaseHTTPRequestHandler], None]


class _Endpoint:
    """An HTTP(S) server on loopback that answers with `respond` and counts requests."""

    def __init__(self, respond: Respond, tls: ssl.SSLContext | None = None) -> None:
        self.requests = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests += 1
                respond(self)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=functools.partial(self._server.serve_forever, poll_interval=0.05), daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate, key) PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def trusted_tls(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """The server side's TLS context; the client trusts its certificate from now on."""
    cert_path, key_path = certificate
    # urllib builds its client context per connection from the default verify paths.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


@pytest.fixture
def jwks_body(tmp_path: Path) -> bytes:
    return json.dumps(DevIssuer(tmp_path).jwks()).encode()


def _serve_keys(body: bytes) -> Respond:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def _redirect_to(location: Callable[[], str]) -> Respond:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location())
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return respond


@pytest.fixture
def endpoints() -> Iterator[list[_Endpoint]]:
    started: list[_Endpoint] = []
    yield started
    for endpoint in started:
        endpoint.close()


def test_keys_come_over_https_and_through_an_https_redirect(
    trusted_tls: ssl.SSLContext, jwks_body: bytes, endpoints: list[_Endpoint]
) -> None:
    keys = _Endpoint(_serve_keys(jwks_body), trusted_tls)
    moved = _Endpoint(_redirect_to(lambda: f"{keys.base}/certs"), trusted_tls)
    endpoints += [keys, moved]
    assert parse_jwks(fetch_jwks(f"{moved.base}/certs", TIMEOUT))
    assert keys.requests == 1


def test_an_https_url_never_follows_a_redirect_to_http(
    trusted_tls: ssl.SSLContext, jwks_body: bytes, endpoints: list[_Endpoint]
) -> None:
    # Plain http on loopback is a valid URL to start from, but not to fall back to.
    plain = _Endpoint(_serve_keys(jwks_body))
    secure = _Endpoint(_redirect_to(lambda: f"{plain.base}/certs"), trusted_tls)
    endpoints += [plain, secure]
    with pytest.raises(JwksUnavailableError, match="from https to http"):
        fetch_jwks(f"{secure.base}/certs", TIMEOUT)
    assert secure.requests == 1
    assert plain.requests == 0


def test_a_loopback_http_url_never_follows_a_redirect_off_the_machine(
    endpoints: list[_Endpoint],
) -> None:
    plain = _Endpoint(_redirect_to(lambda: "http://keys.example/certs"))
    endpoints.append(plain)
    with pytest.raises(JwksUnavailableError, match="other than loopback"):
        fetch_jwks(f"{plain.base}/certs", TIMEOUT)


@pytest.mark.parametrize(
    "url", ["http://keycloak.internal/certs", "http://10.0.0.5/certs", "http://[fe80::1]/certs"]
)
def test_a_plain_http_url_off_loopback_is_never_fetched(url: str) -> None:
    with pytest.raises(JwksUnavailableError, match="must be https"):
        fetch_jwks(url, TIMEOUT)
