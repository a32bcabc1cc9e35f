"""Checks on client input. Each failure is an InvalidArgument naming the field.

Messages never echo the offending value: it may be a UID or other data that
could identify a patient.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta

from pacs_grpc.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
# Deliberately loose: one @, something on both sides, no spaces. Keycloak
# already verified the addresses it issues; this catches typing slips.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9 ()./-]{3,40}$")
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def positive_id(field: str, value: int) -> int:
    if value <= 0:
        raise InvalidArgument(field, "must be a positive id")
    return value


def page_size(field: str, value: int, maximum: int) -> int:
    if value == 0:
        return min(DEFAULT_PAGE_SIZE, maximum)
    if value < 0 or value > maximum:
        raise InvalidArgument(field, f"must be between 1 and {maximum}")
    return value


def text(field: str, value: str, *, max_length: int, required: bool = False) -> str | None:
    """A trimmed text value, or None for empty optional ones."""
    trimmed = value.strip()
    if not trimmed:
        if required:
            raise InvalidArgument(field, "is required")
        return None
    if len(trimmed) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    if any(ord(c) < 32 for c in trimmed):
        raise InvalidArgument(field, "must not contain control characters")
    return trimmed


def email(field: str, value: str) -> str | None:
    trimmed = text(field, value, max_length=254)
    if trimmed is not None and not _EMAIL.match(trimmed):
        raise InvalidArgument(field, "must be an e-mail address")
    return trimmed


def phone(field: str, value: str) -> str | None:
    trimmed = text(field, value, max_length=40)
    if trimmed is not None and not _PHONE.match(trimmed):
        raise InvalidArgument(field, "must be a phone number")
    return trimmed


def request_id(field: str, value: str) -> str | None:
    if not value:
        return None
    if not _REQUEST_ID.match(value):
        raise InvalidArgument(field, "must be 1 to 128 letters, digits or . _ : -")
    return value


def field_mask(field: str, paths: Iterable[str], allowed: frozenset[str]) -> frozenset[str]:
    """The mask's paths, all known; an empty mask is refused (it would change nothing)."""
    chosen = frozenset(paths)
    if not chosen:
        raise InvalidArgument(field, f"must name at least one of: {', '.join(sorted(allowed))}")
    unknown = chosen - allowed
    if unknown:
        # Only names shaped like field names are echoed back.
        shown = sorted(p for p in unknown if _FIELD_NAME.match(p)) or ["(unnamed)"]
        raise InvalidArgument(
            field, f"unknown path(s) {', '.join(shown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return chosen


def url_ttl(field: str, seconds: int, *, default: timedelta, longest: timedelta) -> timedelta:
    """A signed URL's lifetime: 0 for `default`, else 1 second up to `longest`."""
    if seconds == 0:
        return default
    most = int(longest.total_seconds())
    if not 0 < seconds <= most:
        raise InvalidArgument(field, f"must be between 1 and {most}")
    return timedelta(seconds=seconds)
