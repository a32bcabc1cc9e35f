"""The gate's audit row for a refused call: written once, whatever the caller does meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from pacs_grpc.api.gate import AccessGate
from pacs_grpc.domain.access import Access
from pacs_grpc.domain.audit import AuditEntry, AuditTrail
from pacs_grpc.domain.identity import Caller, Principal
from pacs_grpc.services.context import CallContext


class _SlowAuditStore:
    """Holds each insert until released, as a busy database would."""

    def __init__(self) -> None:
        self.rows: list[AuditEntry] = []
        self.release = asyncio.Event()

    async def insert(self, conn: Any, entry: AuditEntry) -> None:
        await self.release.wait()
        self.rows.append(entry)


class _Database:
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[object]:
        yield object()

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[object]:
        yield object()


def _gate(audit: _SlowAuditStore) -> AccessGate:
    return AccessGate(
        verifier=None,  # type: ignore[arg-type]
        read_token=None,  # type: ignore[arg-type]
        directory=None,  # type: ignore[arg-type]
        db=_Database(),
        audit=audit,
        admin_role="pacs-admin",
    )


def _call() -> CallContext:
    principal = Principal(subject="s-1", username="prober")
    return CallContext(
        caller=Caller(principal=principal, user_id=7, platform_admin=False),
        access=Access.PROJECT_VIEWER,
        audit=AuditTrail(action="GetProject", subject="s-1", client_id=None, request_id="r"),
    )


async def test_a_call_cancelled_while_its_refusal_is_written_leaves_one_row() -> None:
    audit = _SlowAuditStore()
    gate = _gate(audit)
    call = _call()
    refusal = asyncio.create_task(gate.close(call, grpc.StatusCode.NOT_FOUND))
    await asyncio.sleep(0.01)
    # The client goes away: the handler is cancelled, and the edge closes the call again.
    refusal.cancel()
    await asyncio.gather(refusal, return_exceptions=True)
    await gate.close(call, grpc.StatusCode.OK)
    audit.release.set()
    await gate.drain()
    assert [(r.outcome, r.error_code) for r in audit.rows] == [("denied", "NOT_FOUND")]


async def test_the_refusal_row_is_written_after_the_caller_gave_up() -> None:
    audit = _SlowAuditStore()
    gate = _gate(audit)
    refusal = asyncio.create_task(gate.close(_call(), grpc.StatusCode.PERMISSION_DENIED))
    await asyncio.sleep(0.01)
    refusal.cancel()
    await asyncio.gather(refusal, return_exceptions=True)
    assert audit.rows == []
    audit.release.set()
    await gate.drain()
    assert [r.error_code for r in audit.rows] == ["PERMISSION_DENIED"]
