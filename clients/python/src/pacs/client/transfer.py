"""HTTP straight to object storage through the server's signed URLs.

Signed URLs are bearer secrets: nothing here puts one (or its query string) into an exception,
so a failure reads "HTTP 503" or "ConnectTimeoutError", never the URL.
"""

from __future__ import annotations

from typing import Any

import urllib3

from pacs.v1 import mask_pb2

_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class TransferFailed(Exception):
    """One request to storage failed; `transient` failures are worth another attempt, and
    `refused` means storage refused the signature (an expired ticket or URL): a new one may work."""

    def __init__(self, reason: str, *, transient: bool = False, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.refused = refused


class SignedUrlTransport:
    """Uploads and downloads over one connection pool sized for the caller's concurrency."""

    def __init__(
        self, *, concurrency: int = 8, connect_timeout: float = 10.0, read_timeout: float = 120.0
    ) -> None:
        self._http = urllib3.PoolManager(
            maxsize=max(concurrency, 1),
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )

    def upload(self, ticket: mask_pb2.UploadTicket, body: bytes, content_type: str) -> None:
        if ticket.method == mask_pb2.UPLOAD_METHOD_PUT:
            headers = {**dict(ticket.headers), "Content-Type": content_type}
            response = self._send("PUT", ticket.url, body=body, headers=headers)
        else:
            # The policy's fields first: storage reads everything after the file as ignored.
            fields: dict[str, Any] = dict(ticket.fields)
            fields["file"] = ("mask", body, content_type)
            response = self._send("POST", ticket.url, fields=fields)
        _check(response.status)

    def download(self, url: str) -> bytes:
        response = self._send("GET", url)
        _check(response.status)
        return response.data

    def close(self) -> None:
        self._http.clear()

    def _send(self, method: str, url: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        try:
            return self._http.request(method, url, redirect=False, **kwargs)
        except urllib3.exceptions.HTTPError as error:
            raise TransferFailed(type(error).__name__, transient=True) from None


def _check(status: int) -> None:
    if 200 <= status < 300:
        return
    reason = f"HTTP {status}"
    if status == 403:
        raise TransferFailed(reason, refused=True)
    raise TransferFailed(reason, transient=status in _TRANSIENT_STATUSES)
