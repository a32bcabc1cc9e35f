"""Bearer tokens for the PACS: Keycloak's client-credentials grant, refreshed ahead of expiry.

The same provider type as the Python client's `pacs.client.tokens.ClientCredentials`, with the
same rules (one shared token, refreshed `refresh_margin` seconds early, the current one kept
while a refresh fails and it is still valid). It is rebuilt here on requests, rather than
imported, because the server must not depend on the client package.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.auth import AuthBase


class TokenUnavailableError(RuntimeError):
    """No token could be had. The message never contains a token or the client secret."""


class ClientCredentialsTokens:
    """Thread-safe: PACS requests run in worker threads and share one token."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = "",
        timeout_seconds: float = 5.0,
        refresh_margin: float = 30.0,
        retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._scope = scope
        self._timeout = timeout_seconds
        self._margin = refresh_margin
        self._retry_interval = retry_interval
        self._clock = clock
        # Its own session: the PACS session's auth hook must not apply to the token request.
        self._session = session or requests.Session()
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self.fetches = 0

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                self._fetch(now)
            except TokenUnavailableError:
                if self._token is not None and now < self._expires_at:
                    self._refresh_at = min(now + self._retry_interval, self._expires_at)
                    return self._token
                raise
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        """The PACS refused the current token (revoked, or its key rotated)."""
        with self._lock:
            self._token = None

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"ClientCredentialsTokens(client_id={self.client_id!r})"

    def _fetch(self, now: float) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._secret,
        }
        if self._scope:
            form["scope"] = self._scope
        self.fetches += 1
        try:
            response = self._session.post(
                self.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            raise TokenUnavailableError(
                f"token endpoint unreachable ({type(error).__name__})"
            ) from None
        if response.status_code != 200:
            raise TokenUnavailableError(
                f"token endpoint refused the client: HTTP {response.status_code}"
            )
        body = _json(response)
        token = body.get("access_token")
        lifetime = body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise TokenUnavailableError("token endpoint answered without an access_token")
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            raise TokenUnavailableError("token endpoint answered without a positive expires_in")
        self._token = token
        self._expires_at = now + lifetime
        self._refresh_at = now + lifetime - min(self._margin, lifetime / 2)


class BearerAuth(AuthBase):
    """Adds the current token; a 401 makes it fetch a new one and send the request once more."""

    def __init__(self, tokens: ClientCredentialsTokens) -> None:
        self._tokens = tokens

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._tokens.token()}"
        request.register_hook("response", self._retry_on_401)
        return request

    def _retry_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        sent = response.request
        replayable = sent.body is None or isinstance(sent.body, bytes | str)
        if response.status_code != 401 or getattr(sent, "_pacs_retried", False) or not replayable:
            return response
        self._tokens.invalidate()
        response.close()
        again = sent.copy()
        again._pacs_retried = True  # type: ignore[attr-defined]
        again.headers["Authorization"] = f"Bearer {self._tokens.token()}"
        connection = response.connection
        retried: requests.Response = connection.send(again, **kwargs)
        retried.history.append(response)
        retried.request = again
        return retried


def _json(response: requests.Response) -> dict[str, object]:
    try:
        parsed = response.json()
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
