"""The kinds of variable beyond plain numbers and words: URLs, algorithms, UID roots.

URL parsers report only a value's shape, because a URL may carry credentials.
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

from pacs_grpc.config.variables import Kind, words
from pacs_grpc.domain.segments import new_uid

# Asymmetric only: an HMAC algorithm would make the public JWKS a secret.
TOKEN_ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: a host no packet to which leaves the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _database_url(raw: str) -> str:
    if urlsplit(raw).scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// URL")
    return raw


def _endpoint_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("must not have a path or query (the bucket is S3_BUCKET)")
    return f"{parts.scheme}://{parts.netloc}"


def _service_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a query, fragment or credentials")
    return raw.rstrip("/")


def _jwks_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    # Keys fetched in clear text could be swapped on the way, and then any token verifies.
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        raise ValueError("must be https:// (http:// only on loopback)")
    return raw


def _algorithms(raw: str) -> tuple[str, ...]:
    value = words(raw)
    if not value or any(a not in TOKEN_ALGORITHMS for a in value):
        raise ValueError(f"must list algorithms among {', '.join(sorted(TOKEN_ALGORITHMS))}")
    return value


def _uid_root(raw: str) -> str:
    try:
        new_uid(raw)
    except ValueError as error:
        raise ValueError(f"is not a usable UID root: {error}") from None
    return raw


DATABASE_URL: Final = Kind(_database_url, "`postgresql://` URL")
ENDPOINT_URL: Final = Kind(_endpoint_url, "`http(s)://host[:port]`, no path")
SERVICE_URL: Final = Kind(_service_url, "`http(s)://` URL; no query, fragment or credentials")
JWKS_URL: Final = Kind(
    _jwks_url, "`https://` URL; `http://` only to loopback (127.0.0.0/8, `::1`, `localhost`)"
)
ALGORITHMS: Final = Kind(
    _algorithms, "comma-separated, among " + ", ".join(f"`{a}`" for a in TOKEN_ALGORITHMS)
)
# The longest root allowed is the domain's (room for enough random digits); an error names it.
UID_ROOT: Final = Kind(_uid_root, "dot-separated numbers without leading zeros")
