"""Revocation reaches open WatchAnnotations streams: removal from the project, token expiry.

On a server of its own with no clock-skew leeway (OIDC_LEEWAY_SECONDS=0), so that a token
stops being valid at its `exp`, and the default WATCH_RECHECK_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc, identity_pb2, identity_pb2_grpc

from pacs_devstack.issuer import DevIssuer
from pacs_devstack.ports import free_port
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from tests.support.projects import ANNOTATOR, VIEWER, Team, add_member, new_team
from tests.support.users import login, unique_name

pytestmark = pytest.mark.slow

REVOCATION_BOUND_SECONDS = 5.0


@pytest.fixture(scope="module")
def strict_server(live_stack: LocalStack, artifacts_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    server = ServerProcess(
        {**live_stack.server_environment(port), "OIDC_LEEWAY_SECONDS": "0"},
        port,
        log_path=artifacts_dir / "watch-revocation-server.log",
    )
    server.start()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
async def strict_channel(strict_server: ServerProcess) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(strict_server.address) as channel:
        yield channel


async def _team(channel: aio.Channel, issuer: DevIssuer) -> Team:
    return await new_team(channel, issuer, unique_name("revoke"), {"writer": ANNOTATOR})


async def _create(channel: aio.Channel, team: Team, study: str) -> int:
    data = struct_pb2.Struct()
    data.update({"x": 1})
    reply = await annotation_pb2_grpc.AnnotationServiceStub(channel).CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(
            annotation=annotation_pb2.Annotation(
                project_id=team.project_id,
                study_uid=study,
                annotation_type="point",
                annotation_data=data,
            )
        ),
        metadata=team["writer"].metadata(),
    )
    return reply.annotation.id


class Watch:
    """An open stream read by a task of its own: waiting for a message with a timeout must
    not cancel the read, which would cancel the whole call."""

    def __init__(self, call: object) -> None:
        self.call = call
        self.messages: asyncio.Queue[annotation_pb2.WatchAnnotationsResponse] = asyncio.Queue()
        # (code, details, wall-clock time the end arrived)
        self.ended: asyncio.Future[tuple[grpc.StatusCode, str, float]] = (
            asyncio.get_running_loop().create_future()
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.call:  # type: ignore[attr-defined]
                self.messages.put_nowait(message)
            code, details = await self.call.code(), await self.call.details()  # type: ignore[attr-defined]
        except aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
        self.ended.set_result((code, details, time.time()))

    async def until_live(self, channel: aio.Channel, team: Team, study: str) -> None:
        """Writes until one of the writes arrives: from then on the stream is live."""
        written = []
        for _ in range(20):
            written.append(await _create(channel, team, study))
            try:
                async with asyncio.timeout(0.5):
                    event = await self.messages.get()
            except TimeoutError:
                continue
            assert event.annotation_id in written
            return
        raise AssertionError("the stream never delivered an event")

    async def end(self, within: float) -> tuple[grpc.StatusCode, str, float]:
        async with asyncio.timeout(within):
            return await asyncio.shield(self.ended)

    async def close(self) -> None:
        self.call.cancel()  # type: ignore[attr-defined]
        await asyncio.gather(self._reader, return_exceptions=True)


def _watch_rows(database_url: str, request_id: str) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "select action, outcome from audit_log where request_id = %s", [request_id]
        ).fetchall()


async def _logged_code(log_path: Path, request_id: str) -> str | None:
    """The code of the RPC's line in the server's JSON log, once it is there."""
    for _ in range(40):
        text = await asyncio.to_thread(log_path.read_text, errors="replace")
        for line in text.splitlines():
            if request_id in line and '"rpc"' in line:
                return str(json.loads(line).get("code"))
        await asyncio.sleep(0.05)
    return None


async def test_a_removed_viewers_stream_ends_with_not_found_within_five_seconds(
    strict_channel: aio.Channel, issuer: DevIssuer, live_stack: LocalStack, artifacts_dir: Path
) -> None:
    team = await _team(strict_channel, issuer)
    viewer = await login(strict_channel, issuer, unique_name("viewer"))
    await add_member(strict_channel, team.admin, team.project_id, viewer, VIEWER)
    study = f"1.2.826.{uuid.uuid4().int % 10**10}"
    request_id = f"watch-{uuid.uuid4().hex}"
    watch = Watch(
        annotation_pb2_grpc.AnnotationServiceStub(strict_channel).WatchAnnotations(
            annotation_pb2.WatchAnnotationsRequest(project_id=team.project_id, study_uid=study),
            metadata=viewer.metadata(request_id),
        )
    )
    await watch.until_live(strict_channel, team, study)

    await identity_pb2_grpc.IdentityServiceStub(strict_channel).RemoveProjectMember(
        identity_pb2.RemoveProjectMemberRequest(project_id=team.project_id, user_id=viewer.user_id),
        metadata=team.admin.metadata(),
    )
    removed_at = time.time()
    code, details, ended_at = await watch.end(within=REVOCATION_BOUND_SECONDS + 5)

    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "project not found"
    assert ended_at - removed_at < REVOCATION_BOUND_SECONDS
    # One row, written when the stream was authorised; rechecks write none. How it ended is
    # in the RPC's log line.
    assert _watch_rows(live_stack.database_url, request_id) == [("WatchAnnotations", "ok")]
    log = artifacts_dir / "watch-revocation-server.log"
    assert await _logged_code(log, request_id) == "NOT_FOUND"


async def test_a_stream_ends_with_unauthenticated_when_its_token_expires(
    strict_channel: aio.Channel, issuer: DevIssuer, artifacts_dir: Path
) -> None:
    team = await _team(strict_channel, issuer)
    viewer = await login(strict_channel, issuer, unique_name("viewer"))
    await add_member(strict_channel, team.admin, team.project_id, viewer, VIEWER)
    study = f"1.2.826.{uuid.uuid4().int % 10**10}"
    exp = int(time.time()) + 4
    short = issuer.mint(viewer.username, extra_claims={"exp": exp})
    request_id = f"watch-{uuid.uuid4().hex}"
    watch = Watch(
        annotation_pb2_grpc.AnnotationServiceStub(strict_channel).WatchAnnotations(
            annotation_pb2.WatchAnnotationsRequest(project_id=team.project_id, study_uid=study),
            metadata=(("authorization", f"Bearer {short}"), ("x-request-id", request_id)),
        )
    )
    await watch.until_live(strict_channel, team, study)
    assert time.time() < exp, "the stream must be live before the token expires"

    code, details, ended_at = await watch.end(within=10)

    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "token expired")
    # At exp, not at a later recheck tick (the default tick is 2 s).
    assert exp <= ended_at < exp + 1.5
    log = artifacts_dir / "watch-revocation-server.log"
    assert await _logged_code(log, request_id) == "UNAUTHENTICATED"


async def test_a_viewer_keeps_watching_a_deactivated_project(
    strict_channel: aio.Channel, issuer: DevIssuer
) -> None:
    # Deactivation stops changes, not reading: the recheck applies the rule that admitted
    # the stream, so it must not end it.
    team = await _team(strict_channel, issuer)
    viewer = await login(strict_channel, issuer, unique_name("viewer"))
    await add_member(strict_channel, team.admin, team.project_id, viewer, VIEWER)
    study = f"1.2.826.{uuid.uuid4().int % 10**10}"
    watch = Watch(
        annotation_pb2_grpc.AnnotationServiceStub(strict_channel).WatchAnnotations(
            annotation_pb2.WatchAnnotationsRequest(project_id=team.project_id, study_uid=study),
            metadata=viewer.metadata(),
        )
    )
    await watch.until_live(strict_channel, team, study)
    await identity_pb2_grpc.IdentityServiceStub(strict_channel).DeactivateProject(
        identity_pb2.DeactivateProjectRequest(project_id=team.project_id),
        metadata=team.admin.metadata(),
    )
    with pytest.raises(TimeoutError):
        await watch.end(within=REVOCATION_BOUND_SECONDS)
    await watch.close()
