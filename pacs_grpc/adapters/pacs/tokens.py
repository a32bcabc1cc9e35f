"""Bearer tokens for the PACS, on the requests session the DICOMweb client uses.

Tokens come from the Python client's `pacs.client.tokens.ClientCredentials` (Keycloak's
client-credentials grant: one shared token, refreshed ahead of expiry, the current one kept
while a refresh fails and it is still valid); this module only puts them on requests.
"""

from __future__ import annotations

from typing import Any

import requests
from pacs.client.tokens import TokenProvider
from requests.auth import AuthBase


class BearerAuth(AuthBase):
    """Adds the current token; a 401 makes it fetch a new one and send the request once more."""

    def __init__(self, tokens: TokenProvider) -> None:
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
