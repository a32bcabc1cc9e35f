"""Where the bearer token of every call comes from.

A token provider is asked for a token before every attempt of every call, so a provider that
refreshes (ClientCredentials) keeps long pipelines authenticated without the caller noticing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlencode

import urllib3


class TokenError(Exception):
    """No token could be had. The message never contains a token or a client secret."""


class TokenProvider(Protocol):
    def token(self) -> str:
        """A bearer token valid now (without the `Bearer ` prefix)."""
        ...

    def invalidate(self) -> bool:
        """Forget the current token after the server refused it.

        True when the next `token()` may return a different one, so the refused call is worth
        one more attempt.
        """
        ...


class StaticToken:
    """A token obtained elsewhere (`pacs-dev token`, a CI secret, a browser session)."""

    def __init__(self, token: str) -> None:
        token = token.strip()
        if token.lower().startswith("bearer "):
            token = token[len("bearer ") :].strip()
        if not token:
            raise TokenError("the token is empty")
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"


class ClientCredentials:
    """Keycloak's client-credentials grant: a service account's tokens, refreshed ahead of expiry.

    Thread-safe: concurrent callers share one token, and while it is being fetched they wait
    for that one request instead of sending their own. A token is refreshed `refresh_margin`
    seconds before it expires (at most half its lifetime before), so a call never leaves with
    a token about to lapse on the way. If the refresh fails while the current token is still
    valid, the current one keeps being used and the refresh is tried again `retry_interval`
    seconds later; once it has expired, the failure is raised.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        refresh_margin: float = 30.0,
        retry_interval: float = 5.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        http: urllib3.PoolManager | None = None,
    ) -> None:
        if not client_id or not client_secret:
            raise TokenError("client credentials need a client id and a client secret")
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._scope = scope
        self._margin = refresh_margin
        self._retry_interval = retry_interval
        self._timeout = urllib3.Timeout(total=timeout)
        self._clock = clock
        self._http = http or urllib3.PoolManager(retries=False)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0

    @classmethod
    def keycloak(
        cls, realm_url: str, client_id: str, client_secret: str, *, scope: str | None = None
    ) -> ClientCredentials:
        """For a realm URL such as `https://sso.example/realms/pacs` (the tokens' `iss`)."""
        return cls(keycloak_token_url(realm_url), client_id, client_secret, scope=scope)

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                self._fetch(now)
            except TokenError:
                if self._token is not None and now < self._expires_at:
                    self._refresh_at = min(now + self._retry_interval, self._expires_at)
                    return self._token
                raise
            assert self._token is not None
            return self._token

    def invalidate(self) -> bool:
        with self._lock:
            self._token = None
        return True

    def __repr__(self) -> str:
        return f"ClientCredentials({self.token_url!r}, client_id={self.client_id!r})"

    def _fetch(self, now: float) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._secret,
        }
        if self._scope:
            form["scope"] = self._scope
        try:
            response = self._http.request(
                "POST",
                self.token_url,
                body=urlencode(form),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
                timeout=self._timeout,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as error:
            raise TokenError(f"token endpoint unreachable ({type(error).__name__})") from None
        body = _json(response.data)
        if response.status != 200:
            reason = body.get("error") if isinstance(body.get("error"), str) else None
            detail = f": {reason}" if reason else ""
            raise TokenError(f"token endpoint refused the client: HTTP {response.status}{detail}")
        token = body.get("access_token")
        lifetime = body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise TokenError("token endpoint answered without an access_token")
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            raise TokenError("token endpoint answered without a positive expires_in")
        self._token = token
        self._expires_at = now + lifetime
        self._refresh_at = now + lifetime - min(self._margin, lifetime / 2)


def keycloak_token_url(realm_url: str) -> str:
    return realm_url.rstrip("/") + "/protocol/openid-connect/token"


def _json(data: bytes) -> dict[str, object]:
    try:
        parsed = json.loads(data)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
