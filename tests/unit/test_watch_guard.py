"""The guard of WatchAnnotations streams, with fakes: token expiry and access rechecks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pacs_devstack.issuer import DEV_AUDIENCE, DEV_ISSUER, DevIssuer
from pacs_grpc.adapters.auth import JwksCache, TokenVerifier
from pacs_grpc.adapters.clock import SystemClock
from pacs_grpc.config import ConfigError, OidcSettings, Settings
from pacs_grpc.domain.access import Access
from pacs_grpc.domain.audit import AuditTrail
from pacs_grpc.domain.errors import (
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from pacs_grpc.domain.identity import Caller, Principal, Project, ProjectRole
from pacs_grpc.services import watch
from pacs_grpc.services.context import CallContext
from pacs_grpc.services.watch import WatchAccess, guarded

TICK = 0.05


class Feed:
    """A subscription fed by the test; records that it was left, and with nobody reading."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()
        self.reading = False
        self.left_while_reading: bool | None = None

    @asynccontextmanager
    async def subscription(self) -> AsyncIterator[AsyncIterator[int]]:
        try:
            yield self._items()
        finally:
            self.left_while_reading = self.reading

    async def _items(self) -> AsyncIterator[int]:
        while True:
            self.reading = True
            try:
                item = await self.queue.get()
            finally:
                self.reading = False
            if item is None:
                return
            yield item


class Checks:
    """An access check whose answers the test sets; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.errors: list[Exception] = []

    async def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def _guard(
    feed: Feed, checks: Checks, *, valid_until: float | None = None, every: float = TICK
) -> AbstractAsyncContextManager[AsyncIterator[int]]:
    return guarded(
        feed.subscription(), checks, valid_until=valid_until, recheck_seconds=every, clock=time.time
    )


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def test_events_flow_while_access_holds_and_access_is_checked_every_tick() -> None:
    feed, checks = Feed(), Checks()
    before = _other_tasks()
    async with _guard(feed, checks, valid_until=time.time() + 60) as items:
        for item in (1, 2, 3):
            feed.queue.put_nowait(item)
        assert [await anext(items) for _ in range(3)] == [1, 2, 3]
        await asyncio.sleep(TICK * 4.5)
        feed.queue.put_nowait(None)
        with pytest.raises(StopAsyncIteration):
            await anext(items)
    assert 2 <= checks.calls <= 6
    assert feed.left_while_reading is False
    assert _other_tasks() == before


async def test_losing_access_ends_the_stream_with_the_checks_refusal_within_a_tick() -> None:
    feed, checks = Feed(), Checks()
    before = _other_tasks()
    async with _guard(feed, checks) as items:
        feed.queue.put_nowait(1)
        assert await anext(items) == 1
        checks.errors.append(NotFound("project not found"))
        started = time.monotonic()
        # Waiting for an event that never comes: the refusal must still arrive.
        with pytest.raises(NotFound):
            await anext(items)
        assert time.monotonic() - started < TICK * 2 + 0.3
        # And stays the answer: the stream never resumes.
        feed.queue.put_nowait(2)
        with pytest.raises(NotFound):
            await anext(items)
    # The pending read was ended before the subscription was left, and nothing leaked.
    assert feed.left_while_reading is False
    assert _other_tasks() == before


async def test_no_event_is_delivered_once_access_is_refused() -> None:
    feed, checks = Feed(), Checks()
    checks.errors.append(PermissionDenied("this needs the viewer role in the project"))
    async with _guard(feed, checks) as items:
        await asyncio.sleep(TICK * 2)
        feed.queue.put_nowait(1)
        with pytest.raises(PermissionDenied):
            await anext(items)


async def test_the_token_ends_the_stream_at_its_expiry_not_at_the_next_tick() -> None:
    feed, checks = Feed(), Checks()
    before = _other_tasks()
    valid_until = time.time() + 0.3
    async with _guard(feed, checks, valid_until=valid_until, every=30) as items:
        with pytest.raises(Unauthenticated, match="token expired"):
            await anext(items)
        ended = time.time()
    assert valid_until <= ended < valid_until + 0.5
    assert checks.calls == 0
    assert _other_tasks() == before


async def test_a_token_already_expired_ends_the_stream_before_any_event() -> None:
    feed, checks = Feed(), Checks()
    feed.queue.put_nowait(1)
    async with _guard(feed, checks, valid_until=time.time() - 1, every=30) as items:
        await asyncio.sleep(0)
        with pytest.raises(Unauthenticated):
            await anext(items)


async def test_one_unreachable_recheck_is_tolerated_and_two_in_a_row_end_the_stream() -> None:
    assert watch.FAILED_RECHECKS_TOLERATED == 1
    feed, checks = Feed(), Checks()
    async with _guard(feed, checks) as items:
        # A blip between two good checks: the stream stays.
        checks.errors.append(Unavailable("database busy, retry shortly"))
        await asyncio.sleep(TICK * 3.5)
        assert checks.calls >= 3
        feed.queue.put_nowait(1)
        assert await anext(items) == 1
        checks.errors.extend([Unavailable("database busy"), Unavailable("database busy")])
        with pytest.raises(Unavailable, match="resume with after_event_id"):
            await anext(items)


async def test_leaving_the_block_while_a_read_waits_ends_everything() -> None:
    feed, checks = Feed(), Checks()
    before = _other_tasks()
    async with _guard(feed, checks, valid_until=time.time() + 60) as items:

        async def read() -> int:
            return await anext(items)

        reader = asyncio.create_task(read())
        await asyncio.sleep(TICK / 2)
        assert feed.reading
        # The client goes away: gRPC cancels the handler that waits for the next event.
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
    assert feed.left_while_reading is False
    assert _other_tasks() == before


# WatchAccess: the recheck itself, against a fake ProjectStore.


class Projects:
    def __init__(self) -> None:
        self.role: ProjectRole | None = ProjectRole.VIEWER
        self.active = True
        self.exists = True
        self.queries = 0

    async def with_role(
        self, conn: object, project_id: int, user_id: int
    ) -> tuple[Project, ProjectRole | None] | None:
        assert conn == "tx"
        self.queries += 1
        if not self.exists:
            return None
        now = datetime.now(UTC)
        return Project(project_id, "p", None, self.active, now, now), self.role


class Transactions:
    def __init__(self) -> None:
        self.opened = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[str]:
        self.opened += 1
        yield "tx"

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[str]:
        self.opened += 1
        yield "tx"


def _call(*, admin: bool = False, valid_until: float | None = None) -> CallContext:
    trail = AuditTrail(action="WatchAnnotations", subject="s", client_id=None, request_id="r")
    # The stream's row is written when it opens: a recheck that touched it would raise.
    trail.written = trail.recorded = True
    return CallContext(
        caller=Caller(
            principal=Principal(subject="s", username="u", valid_until=valid_until),
            user_id=7,
            platform_admin=admin,
        ),
        access=Access.PROJECT_VIEWER,
        audit=trail,
    )


async def _first_outcome(access: WatchAccess[Any], call: CallContext, feed: Feed) -> Exception:
    async with access.guard(call, 3, feed.subscription()) as items:
        try:
            async with asyncio.timeout(TICK * 6):
                await anext(items)
        except Exception as error:  # noqa: BLE001 - the outcome is what the test inspects
            return error
    raise AssertionError("the stream gave an event")


async def test_a_removed_member_gets_not_found_and_a_deactivated_project_keeps_its_viewers() -> (
    None
):
    projects, db = Projects(), Transactions()
    access = WatchAccess(db, projects, recheck_seconds=TICK, clock=SystemClock())  # type: ignore[arg-type]

    projects.active = False
    assert isinstance(await _first_outcome(access, _call(), Feed()), TimeoutError)
    assert projects.queries >= 3
    assert db.opened == projects.queries  # one query per recheck, each in its own transaction

    projects.role = None
    assert isinstance(await _first_outcome(access, _call(), Feed()), NotFound)

    projects.exists = False
    assert isinstance(await _first_outcome(access, _call(), Feed()), NotFound)

    # Platform administrators act as owners: their role lives in the token, not the table.
    projects.exists = True
    assert isinstance(await _first_outcome(access, _call(admin=True), Feed()), TimeoutError)


async def test_the_guard_takes_the_tokens_validity_from_the_principal() -> None:
    access = WatchAccess(Transactions(), Projects(), recheck_seconds=30, clock=SystemClock())  # type: ignore[arg-type]
    outcome = await _first_outcome(access, _call(valid_until=time.time() + TICK), Feed())
    assert isinstance(outcome, Unauthenticated)


async def test_the_verifier_gives_the_instant_it_stops_accepting_the_token(
    tmp_path: Path,
) -> None:
    issuer = DevIssuer(tmp_path)
    jwks_url = DEV_ISSUER + "/protocol/openid-connect/certs"

    def fetch(url: str, timeout: float) -> bytes:
        return json.dumps(issuer.jwks()).encode()

    settings = OidcSettings(
        issuer=DEV_ISSUER, audience=DEV_AUDIENCE, jwks_url=jwks_url, leeway_seconds=5
    )
    keys = JwksCache(jwks_url, cooldown_seconds=60, timeout_seconds=1, fetch=fetch)
    now = [time.time()]
    verifier = TokenVerifier(settings, keys, clock=lambda: now[0])
    exp = int(time.time()) + 100
    token = issuer.mint("alice", extra_claims={"exp": exp})
    principal = await verifier.verify(token)
    assert principal.valid_until == exp + 5


SETTINGS_ENV = {
    "DATABASE_URL": "postgresql://app:db-password@db.internal:5432/pacs",
    "S3_ENDPOINT": "https://minio.internal:9000",
    "S3_ACCESS_KEY": "access",
    "S3_SECRET_KEY": "s3-secret-value",
    "OIDC_ISSUER": "https://keycloak.internal/realms/pacs",
    "OIDC_AUDIENCE": "pacs-api",
    "OIDC_JWKS_URL": "https://keycloak.internal/realms/pacs/protocol/openid-connect/certs",
}


def test_the_recheck_interval_defaults_to_two_seconds_and_is_bounded() -> None:
    assert Settings.from_env(SETTINGS_ENV).watch_recheck_seconds == 2.0
    read = Settings.from_env({**SETTINGS_ENV, "WATCH_RECHECK_SECONDS": "0.5"})
    assert read.watch_recheck_seconds == 0.5
    for wrong in ("0", "0.05", "6", "-1", "soon"):
        with pytest.raises(ConfigError, match="WATCH_RECHECK_SECONDS"):
            Settings.from_env({**SETTINGS_ENV, "WATCH_RECHECK_SECONDS": wrong})
