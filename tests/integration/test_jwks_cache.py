"""The JWKS cache against a real HTTP endpoint: the dev issuer's, served on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pacs_devstack.issuer import DEV_AUDIENCE, DEV_ISSUER, DevIssuer
from pacs_grpc.adapters.auth import JwksCache, JwksUnavailableError, TokenVerifier
from pacs_grpc.adapters.auth.jwks import MAX_JWKS_BYTES, fetch_jwks, parse_jwks
from pacs_grpc.config import OidcSettings
from pacs_grpc.domain.errors import Unauthenticated
from pacs_grpc.logs import JsonFormatter

COOLDOWN = 60.0
TIMEOUT = 5.0


class FakeClock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[DevIssuer]:
    issuer = DevIssuer(tmp_path)
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def jwks_url(issuer: DevIssuer) -> str:
    return issuer.serve()


def _cache(
    url: str,
    clock: Callable[[], float] = time.monotonic,
    *,
    fetch: Callable[[str, float], bytes] | None = None,
    timeout_seconds: float = TIMEOUT,
) -> JwksCache:
    return JwksCache(
        url, cooldown_seconds=COOLDOWN, timeout_seconds=timeout_seconds, fetch=fetch, clock=clock
    )


def _verifier(url: str, cache: JwksCache) -> TokenVerifier:
    settings = OidcSettings(
        issuer=DEV_ISSUER,
        audience=DEV_AUDIENCE,
        jwks_url=url,
        jwks_cooldown_seconds=COOLDOWN,
        jwks_timeout_seconds=TIMEOUT,
    )
    return TokenVerifier(settings, cache)


def _random_kid() -> str:
    return secrets.token_urlsafe(12)


async def test_a_thousand_concurrent_unknown_kids_cause_one_fetch(jwks_url: str) -> None:
    cache = _cache(jwks_url)
    keys = await asyncio.gather(*(cache.key_for(_random_kid()) for _ in range(1_000)))
    assert keys == [None] * 1_000
    assert cache.fetch_count == 1


async def test_a_thousand_concurrent_tokens_with_random_kids(
    issuer: DevIssuer, jwks_url: str
) -> None:
    cache = _cache(jwks_url)
    verifier = _verifier(jwks_url, cache)
    valid = issuer.mint("alice")
    # Signatures do not matter to a kid that is unknown; minting each would be slow.
    forged = [issuer.mint("mallory", headers={"kid": _random_kid()}) for _ in range(20)]
    tokens = [forged[i % len(forged)] for i in range(1_000)] + [valid] * 10
    before = cache.fetch_count
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert cache.fetch_count - before <= 1
    refused = [r for r in results[:1_000] if isinstance(r, Unauthenticated)]
    assert len(refused) == 1_000
    assert {r.message for r in refused} == {"unknown signing key"}
    assert all(not isinstance(r, BaseException) for r in results[1_000:])


async def test_rotation_is_picked_up_after_the_cooldown(issuer: DevIssuer, jwks_url: str) -> None:
    clock = FakeClock()
    cache = _cache(jwks_url, clock)
    verifier = _verifier(jwks_url, cache)
    await cache.refresh()
    old_token = issuer.mint("alice")
    await verifier.verify(old_token)

    issuer.rotate()
    new_token = issuer.mint("alice")
    # Within the cooldown the new kid is not worth a fetch yet.
    clock.advance(COOLDOWN - 1)
    with pytest.raises(Unauthenticated, match="unknown signing key"):
        await verifier.verify(new_token)
    assert cache.fetch_count == 1

    clock.advance(2)
    assert (await verifier.verify(new_token)).username == "alice"
    assert cache.fetch_count == 2
    # The old key is still published, so tokens it signed still verify.
    assert (await verifier.verify(old_token)).username == "alice"
    assert cache.fetch_count == 2


async def test_cached_keys_outlive_the_endpoint(
    issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    url = issuer.serve() + "?client_secret=do-not-log-me"
    cache = _cache(url, clock)
    verifier = _verifier(url, cache)
    await cache.refresh()
    issuer.stop()

    assert (await verifier.verify(issuer.mint("alice"))).username == "alice"
    unknown = issuer.mint("alice", headers={"kid": _random_kid()})
    started = time.perf_counter()
    with pytest.raises(Unauthenticated, match="unknown signing key"):
        await verifier.verify(unknown)
    # The cooldown, not the fetch timeout, decided: no fetch was even tried.
    assert time.perf_counter() - started < TIMEOUT / 10
    assert cache.fetch_count == 1

    clock.advance(COOLDOWN + 1)
    with (
        caplog.at_level(logging.WARNING, logger="pacs_grpc.adapters.auth.jwks"),
        pytest.raises(Unauthenticated, match="unknown signing key"),
    ):
        await verifier.verify(unknown)
    assert cache.fetch_count == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    line = JsonFormatter().format(warnings[0])
    assert "do-not-log-me" not in line
    assert "client_secret" not in line
    assert json.loads(line)["jwks_url"].endswith("/protocol/openid-connect/certs")

    # The failed fetch counts against the cooldown: an outage costs one fetch per cooldown.
    for _ in range(10):
        with pytest.raises(Unauthenticated, match="unknown signing key"):
            await verifier.verify(issuer.mint("alice", headers={"kid": _random_kid()}))
    assert cache.fetch_count == 2
    assert (await verifier.verify(issuer.mint("alice"))).username == "alice"


async def test_refresh_reports_an_unreachable_endpoint(issuer: DevIssuer) -> None:
    url = issuer.serve()
    issuer.stop()
    cache = _cache(url)
    with pytest.raises(JwksUnavailableError):
        await cache.refresh()
    assert cache.fetch_count == 1
    assert await cache.key_for(issuer.kid) is None
    assert cache.fetch_count == 1


async def test_a_silent_endpoint_is_bounded_by_the_timeout() -> None:
    # Accepts connections (the kernel does, into the backlog) and never answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/realms/x/protocol/openid-connect/certs"
        cache = _cache(url, timeout_seconds=0.5)
        started = time.perf_counter()
        with pytest.raises(JwksUnavailableError, match="timed out"):
            await cache.refresh()
        assert time.perf_counter() - started < 2.5


async def test_the_event_loop_keeps_running_during_a_slow_fetch(
    issuer: DevIssuer, jwks_url: str
) -> None:
    def slow_fetch(url: str, timeout: float) -> bytes:
        time.sleep(1.0)
        return fetch_jwks(url, timeout)

    cache = _cache(jwks_url, fetch=slow_fetch)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    try:
        key = await cache.key_for(issuer.kid)
    finally:
        done.set()
        await ticking
    assert key is not None
    # 1 s at one tick per 10 ms; a blocked loop would have ticked once.
    assert ticks >= 50


async def test_a_caller_giving_up_does_not_cancel_the_shared_fetch(
    issuer: DevIssuer, jwks_url: str
) -> None:
    def slow_fetch(url: str, timeout: float) -> bytes:
        time.sleep(0.3)
        return fetch_jwks(url, timeout)

    cache = _cache(jwks_url, fetch=slow_fetch)
    impatient = asyncio.create_task(cache.key_for(issuer.kid))
    patient = asyncio.create_task(cache.key_for(issuer.kid))
    await asyncio.sleep(0.05)
    impatient.cancel()
    assert await patient is not None
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert cache.fetch_count == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"<html>maintenance</html>",
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"keys": []}',
        b'{"keys": [{"kid": "k", "kty": "RSA", "n": "?", "e": "?"}]}',
    ],
    ids=["html", "not utf-8", "deeply nested", "no keys", "broken key"],
)
async def test_garbage_from_the_endpoint_keeps_the_cached_keys(
    issuer: DevIssuer, garbage: bytes
) -> None:
    clock = FakeClock()
    responses = [json.dumps(issuer.jwks()).encode(), garbage]

    def fetch(url: str, timeout: float) -> bytes:
        return responses.pop(0) if len(responses) > 1 else responses[0]

    cache = _cache("http://keycloak.test/certs", clock, fetch=fetch)
    await cache.refresh()
    clock.advance(COOLDOWN + 1)
    assert await cache.key_for("rotated-kid") is None
    assert cache.fetch_count == 2
    assert await cache.key_for(issuer.kid) is not None


def test_only_signature_keys_that_pyjwt_can_use_are_kept(issuer: DevIssuer) -> None:
    (rsa_key,) = issuer.jwks()["keys"]
    without_use = {k: v for k, v in rsa_key.items() if k != "use"}
    document = {
        "keys": [
            rsa_key,
            {**rsa_key, "kid": "encryption", "use": "enc", "alg": "RSA-OAEP"},
            {**without_use, "kid": "no-use"},
            {"kid": "hmac", "kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
            {"kid": "strange", "kty": "XYZ"},
            {"kid": "bad-curve", "kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"},
            {**rsa_key, "kid": None},
            "not an object",
        ]
    }
    keys = parse_jwks(json.dumps(document).encode())
    assert sorted(keys) == sorted([issuer.kid, "no-use"])


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"keys": "all"}', b'{"keys": []}', b'{"keys": [{"kty": "oct"}]}'],
)
def test_unusable_documents_are_refused(body: bytes) -> None:
    with pytest.raises((JwksUnavailableError, ValueError)):
        parse_jwks(body)


class _Server:
    """A one-route HTTP server whose answer the test chooses."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                respond(self)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=functools.partial(self._server.serve_forever, poll_interval=0.05), daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/certs"

    def __enter__(self) -> _Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _large(declare_length: bool) -> Callable[[BaseHTTPRequestHandler], None]:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        body = b'{"keys": [' + b" " * MAX_JWKS_BYTES + b"]}"
        handler.send_response(200)
        if declare_length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        # The client stops reading at the limit, as it should.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler.wfile.write(body)

    return respond


@pytest.mark.parametrize("declare_length", [True, False], ids=["declared", "undeclared"])
def test_responses_over_one_mebibyte_are_refused(declare_length: bool) -> None:
    with (
        _Server(_large(declare_length)) as server,
        pytest.raises(JwksUnavailableError, match="1 MiB"),
    ):
        fetch_jwks(server.url, TIMEOUT)


def test_redirects_leave_http_never() -> None:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", "ftp://127.0.0.1/certs")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with _Server(respond) as server, pytest.raises(JwksUnavailableError, match="non-HTTP"):
        fetch_jwks(server.url, TIMEOUT)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/certs"])
def test_only_http_urls_are_fetched(url: str) -> None:
    with pytest.raises(JwksUnavailableError, match="http or https"):
        fetch_jwks(url, TIMEOUT)


async def test_the_dev_issuer_answers_404_elsewhere(jwks_url: str) -> None:
    base = jwks_url.removesuffix("/protocol/openid-connect/certs")
    cache = _cache(base + "/.well-known/openid-configuration")
    with pytest.raises(JwksUnavailableError, match="HTTP status 404"):
        await cache.refresh()
