"""Token providers: a static token, and client credentials refreshed ahead of expiry.

The token endpoint is a tiny HTTP server on loopback speaking Keycloak's client-credentials
answer; the clock is fake, so expiry is reached without waiting.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from pacs.client.tokens import ClientCredentials, StaticToken, TokenError, keycloak_token_url

SECRET = "s3cret-value"


@dataclass
class Endpoint:
    url: str
    lifetime: int = 300
    status: int = 200
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    # Set by a test to hold answers until released (to see concurrent callers share one fetch).
    gate: threading.Event | None = None


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            form = parse_qs(self.rfile.read(length).decode())
            state.requests.append(form)
            if state.gate is not None:
                state.gate.wait(5)
            if state.status == 200:
                body: dict[str, Any] = {
                    "access_token": f"token-{len(state.requests)}",
                    "expires_in": state.lifetime,
                    "token_type": "Bearer",
                }
            else:
                body = {"error": "invalid_client", "error_description": "bad secret"}
            data = json.dumps(body).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = keycloak_token_url(f"http://127.0.0.1:{server.server_address[1]}/realms/pacs")
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def credentials(endpoint: Endpoint, clock: Clock, **kwargs: Any) -> ClientCredentials:
    return ClientCredentials(endpoint.url, "seg-pipeline", SECRET, clock=clock, **kwargs)


def test_the_grant_is_client_credentials_with_the_clients_id_and_secret(
    endpoint: Endpoint,
) -> None:
    provider = credentials(endpoint, Clock(), scope="openid")
    assert provider.token() == "token-1"
    (form,) = endpoint.requests
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": ["seg-pipeline"],
        "client_secret": [SECRET],
        "scope": ["openid"],
    }
    assert endpoint.url.endswith("/realms/pacs/protocol/openid-connect/token")


def test_a_token_is_reused_until_the_margin_before_expiry(endpoint: Endpoint) -> None:
    clock = Clock()
    provider = credentials(endpoint, clock, refresh_margin=30)
    assert provider.token() == "token-1"
    clock.now = 269.0
    assert provider.token() == "token-1"
    assert len(endpoint.requests) == 1
    # 30 s before the 300 s lifetime ends, the next call fetches a new token.
    clock.now = 270.0
    assert provider.token() == "token-2"
    clock.now = 400.0
    assert provider.token() == "token-2"
    assert len(endpoint.requests) == 2


def test_short_lived_tokens_refresh_at_half_their_lifetime(endpoint: Endpoint) -> None:
    endpoint.lifetime = 20
    clock = Clock()
    provider = credentials(endpoint, clock, refresh_margin=30)
    assert provider.token() == "token-1"
    clock.now = 9.9
    assert provider.token() == "token-1"
    clock.now = 10.0
    assert provider.token() == "token-2"


def test_concurrent_callers_share_one_fetch(endpoint: Endpoint) -> None:
    endpoint.gate = threading.Event()
    provider = credentials(endpoint, Clock())
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(provider.token())) for _ in range(8)]
    for thread in threads:
        thread.start()
    endpoint.gate.set()
    for thread in threads:
        thread.join(10)
    assert results == ["token-1"] * 8
    assert len(endpoint.requests) == 1


def test_a_refused_client_raises_without_the_secret(endpoint: Endpoint) -> None:
    endpoint.status = 401
    with pytest.raises(TokenError) as raised:
        credentials(endpoint, Clock()).token()
    assert str(raised.value) == "token endpoint refused the client: HTTP 401: invalid_client"
    assert SECRET not in repr(raised.value)


def test_a_failed_refresh_keeps_the_valid_token_and_tries_again_later(endpoint: Endpoint) -> None:
    clock = Clock()
    provider = credentials(endpoint, clock, refresh_margin=30, retry_interval=5)
    assert provider.token() == "token-1"
    endpoint.status = 503
    clock.now = 280.0
    assert provider.token() == "token-1"
    # Within the retry interval the endpoint is left alone.
    clock.now = 284.0
    assert provider.token() == "token-1"
    assert len(endpoint.requests) == 2
    endpoint.status = 200
    clock.now = 285.0
    assert provider.token() == "token-3"


def test_a_failed_refresh_after_expiry_raises(endpoint: Endpoint) -> None:
    clock = Clock()
    provider = credentials(endpoint, clock)
    provider.token()
    endpoint.status = 500
    clock.now = 301.0
    with pytest.raises(TokenError, match="HTTP 500"):
        provider.token()


def test_an_unreachable_endpoint_is_a_token_error() -> None:
    # Bound but not listening: the connection is refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/token"
        provider = ClientCredentials(url, "c", SECRET, timeout=2)
        with pytest.raises(TokenError, match="unreachable"):
            provider.token()


def test_invalidate_forces_a_new_fetch(endpoint: Endpoint) -> None:
    provider = credentials(endpoint, Clock())
    assert provider.token() == "token-1"
    assert provider.invalidate() is True
    assert provider.token() == "token-2"


def test_a_static_token_takes_an_optional_bearer_prefix_and_hides_itself() -> None:
    token = StaticToken("Bearer abc.def.ghi\n")
    assert token.token() == "abc.def.ghi"
    assert token.invalidate() is False
    assert "abc" not in repr(token)
    with pytest.raises(TokenError):
        StaticToken("  ")


def test_the_repr_of_client_credentials_hides_the_secret(endpoint: Endpoint) -> None:
    assert SECRET not in repr(credentials(endpoint, Clock()))
