"""The identity provider's signing keys, fetched from the configured JWKS URL only.

A token names its key (`kid`) but never where to get it: `iss`, `jku` and `x5u`
are attacker-controlled until the signature is checked, so keys come from the
one URL in the configuration. An unknown `kid` may mean the provider rotated
its keys, so it triggers a refetch, but at most one per cooldown across all
callers: otherwise every request with a made-up `kid` would become a request
to the identity provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import jwt

from pacs_grpc.config import is_loopback_host

_LOG = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024

# Symmetric keys have no place in a public key set: accepting one would turn a
# published value into a signing secret.
_REFUSED_KEY_TYPES = frozenset({"oct"})


class JwksUnavailableError(Exception):
    """The JWKS could not be fetched or was not a usable key set."""


Fetch = Callable[[str, float], bytes]


class JwksCache:
    """Signing keys by `kid`, refetched on an unknown `kid` at most once per cooldown."""

    def __init__(
        self,
        url: str,
        *,
        cooldown_seconds: float,
        timeout_seconds: float,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._cooldown = cooldown_seconds
        self._timeout = timeout_seconds
        self._fetch = fetch or fetch_jwks
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        # When the last fetch ended, successful or not: a failing endpoint is
        # rate-limited like a healthy one, so an outage costs one fetch per cooldown.
        self._fetched_at: float | None = None
        self._in_flight: asyncio.Task[None] | None = None
        self._fetch_count = 0

    @property
    def fetch_count(self) -> int:
        return self._fetch_count

    async def key_for(self, kid: str) -> jwt.PyJWK | None:
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._in_flight is None and self._cooling_down():
            return None
        # A failure is logged where it happens; the keys cached before it still serve.
        with contextlib.suppress(JwksUnavailableError):
            await self._fetch_once()
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetch now, ignoring the cooldown; raises JwksUnavailableError."""
        await self._fetch_once()

    def _cooling_down(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._cooldown

    async def _fetch_once(self) -> None:
        """Join the fetch in progress, or start one: concurrent callers share a single fetch."""
        if self._in_flight is None:
            task = asyncio.get_running_loop().create_task(self._fetch_and_store())
            task.add_done_callback(self._fetch_done)
            self._in_flight = task
        # Shielded so that a caller giving up (an RPC deadline) does not cancel
        # the fetch the other callers are waiting for.
        await asyncio.shield(self._in_flight)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._in_flight is task:
            self._in_flight = None

    async def _fetch_and_store(self) -> None:
        self._fetch_count += 1
        try:
            # urllib blocks; in a thread the event loop keeps serving RPCs meanwhile.
            body = await asyncio.to_thread(self._fetch, self._url, self._timeout)
            keys = parse_jwks(body)
        except (
            OSError,
            ValueError,
            # json.loads gives up on absurdly nested documents this way.
            RecursionError,
            http.client.HTTPException,
            jwt.PyJWTError,
            JwksUnavailableError,
        ) as error:
            reason = _describe(error)
            _LOG.warning(
                "JWKS fetch failed; keeping the cached keys",
                extra={"jwks_url": redacted_url(self._url), "reason": reason},
            )
            raise JwksUnavailableError(f"JWKS unavailable: {reason}") from None
        finally:
            self._fetched_at = self._clock()
        self._keys = keys
        _LOG.info(
            "JWKS fetched",
            extra={"jwks_url": redacted_url(self._url), "keys": len(keys)},
        )


def parse_jwks(body: bytes) -> dict[str, jwt.PyJWK]:
    """Signature keys by `kid`; raises when the document holds none we can use."""
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksUnavailableError("not a JWKS document")
    candidates = [key for key in document["keys"] if _is_signature_key(key)]
    if not candidates:
        raise JwksUnavailableError("no signature keys")
    # PyJWKSet skips members PyJWT cannot use (unknown kty or curve, bad values).
    keys: dict[str, jwt.PyJWK] = {}
    for key in jwt.PyJWKSet.from_dict({"keys": candidates}):
        kid = key.key_id
        # The first key wins a duplicated kid, as the provider lists its active key first.
        if isinstance(kid, str) and kid not in keys:
            keys[kid] = key
    return keys


def _is_signature_key(key: object) -> bool:
    if not isinstance(key, Mapping):
        return False
    kid = key.get("kid")
    use = key.get("use")
    return (
        isinstance(kid, str)
        and bool(kid)
        and key.get("kty") not in _REFUSED_KEY_TYPES
        # Keycloak publishes its encryption key (use "enc") in the same set.
        and (use is None or use == "sig")
    )


def _refusal(url: str) -> str | None:
    """Why keys may not come from `url`, or None.

    Keys in clear text could be swapped on the way, and then any token would verify:
    https, or http to a loopback host (the local stack's issuer) only.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "not http or https"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        return "http:// to a host other than loopback"
    return None


class _NoOddRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only where a first request could go, and never from https to http.

    urllib alone would follow one to ftp://, or from https:// to http://.
    """

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme not in ("http", "https"):
            fp.close()
            raise JwksUnavailableError("JWKS URL redirected to a non-HTTP URL")
        if urlsplit(req.full_url).scheme == "https" and urlsplit(newurl).scheme != "https":
            fp.close()
            raise JwksUnavailableError("JWKS URL redirected from https to http")
        reason = _refusal(newurl)
        if reason is not None:
            fp.close()
            raise JwksUnavailableError(f"JWKS URL redirected to {reason}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoOddRedirects())


def fetch_jwks(url: str, timeout: float) -> bytes:
    """GET the JWKS document; blocking, so callers run it in a thread."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise JwksUnavailableError("the JWKS URL must be http or https")
    if _refusal(url) is not None:
        raise JwksUnavailableError("the JWKS URL must be https (http only on loopback)")
    accept = {"Accept": "application/json"}
    request = urllib.request.Request(url, headers=accept)  # noqa: S310 - scheme checked above
    try:
        response = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        # The error holds the open response; left to the garbage collector it leaks a socket.
        error.close()
        raise JwksUnavailableError(f"HTTP status {error.code}") from None
    with response:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_JWKS_BYTES:
            raise JwksUnavailableError("JWKS response larger than 1 MiB")
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise JwksUnavailableError("JWKS response larger than 1 MiB")
    return body


def redacted_url(url: str) -> str:
    """The URL without credentials, query or fragment, which may carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}"


def _describe(error: BaseException) -> str:
    """A short reason for logs, composed here: library texts may quote the URL."""
    if isinstance(error, JwksUnavailableError):
        return str(error)
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP status {error.code}"
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError):
        return f"unreachable ({type(error).__name__})"
    return "not a usable JWKS document"
