"""The access gate every RPC passes before its handler: token, caller, limits, audit.

It verifies the bearer token (nothing reaches the database before that),
resolves the caller's local profile, checks the RPC table's platform-level
requirement and the caller's per-user limits, and after the call makes sure
the RPC left exactly one audit row: successful use cases write theirs inside
their own transaction, and the gate writes one for calls that were denied,
refused by a limit, or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Iterable
from typing import Any

import grpc

from pacs_grpc import deadlines
from pacs_grpc.api.access import ACCESS_BY_METHOD, audit_resource_type, is_public
from pacs_grpc.api.rate_limits import NO_PERMIT_NEEDED, CallLimits, Permit
from pacs_grpc.domain.access import Access
from pacs_grpc.domain.audit import AuditEntry, AuditTrail, Outcome
from pacs_grpc.domain.errors import PermissionDenied
from pacs_grpc.domain.identity import Caller
from pacs_grpc.services.context import CallContext
from pacs_grpc.services.identity import UserDirectory
from pacs_grpc.services.ports import AuditStore, TokenReader, Transactions, Verifier

_log = logging.getLogger(__name__)

_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("pacs_call")

# RESOURCE_EXHAUSTED reaches the gate unrecorded only from a limit that refused the call
# (a Watch that falls behind ends after its subscription was recorded).
_DENIED = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_LOGIN = "/pacs.v1.IdentityService/Login"


def current_call() -> CallContext:
    """The CallContext of the RPC being served; handlers pass it to use cases."""
    return _current.get()


class AccessGate:
    """What every RPC passes before and after its handler, in the order the module docstring gives.

    `open` verifies the token before anything touches the database; `close` leaves exactly one
    audit row per call. One instance serves every call on the event loop; its only state is the
    set of audit writes still running, which `drain` awaits at shutdown.
    """

    def __init__(
        self,
        verifier: Verifier,
        read_token: TokenReader,
        directory: UserDirectory[Any],
        db: Transactions[Any],
        audit: AuditStore[Any],
        *,
        admin_role: str,
        limits: CallLimits | None = None,
        audit_timeout_seconds: float = 10.0,
    ) -> None:
        self._verifier = verifier
        self._read_token = read_token
        self._directory = directory
        self._db = db
        self._audit = audit
        self._admin_role = admin_role
        self._limits = limits
        self._audit_timeout = audit_timeout_seconds
        self._writes: set[asyncio.Future[None]] = set()

    async def open(
        self,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]],
        request_id: str,
    ) -> CallContext | None:
        """Authenticate the call; None for public methods.

        Raises Unauthenticated for a bad token and PermissionDenied for a
        method missing from the table, before anything touches the database.
        """
        if is_public(method):
            return None
        access = ACCESS_BY_METHOD.get(method)
        if access is None:
            raise PermissionDenied("this method is not open to callers")
        principal = await self._verifier.verify(self._read_token(metadata))
        user_id = await self._directory.resolve(principal, refresh=method == _LOGIN)
        call = CallContext(
            caller=Caller(
                principal=principal,
                user_id=user_id,
                platform_admin=self._admin_role in principal.realm_roles,
            ),
            access=access,
            audit=AuditTrail(
                action=method.rsplit("/", 1)[-1],
                subject=principal.subject,
                client_id=principal.client_id,
                request_id=request_id,
                # What the contract declares; a use case may name another on the way.
                resource_type=audit_resource_type(method),
            ),
        )
        _current.set(call)
        return call

    @staticmethod
    def authorize(call: CallContext) -> None:
        """The platform-level part of the RPC table; project roles are checked in use cases."""
        if call.access is Access.PLATFORM_ADMIN and not call.caller.platform_admin:
            raise PermissionDenied(f"this needs {call.access.value}")

    def admit(self, call: CallContext, method: str) -> Permit:
        """The caller's per-user limits; raises ResourceExhausted (with a retry hint) when over.

        Release the permit when the call ends: streams hold a slot until then.
        """
        if self._limits is None:
            return NO_PERMIT_NEEDED
        return self._limits.admit(method, call.caller.principal.subject)

    async def close(self, call: CallContext, code: grpc.StatusCode) -> None:
        """Write the audit row the call has not written yet.

        The write does not depend on the client: it runs without the call's deadline and
        is shielded from the call's cancellation, so a caller cannot send a deadline just
        long enough to hear a refusal and too short for its row to be written. The call
        waits for it while its deadline allows, so normally the row commits before the
        client hears the answer; past that the answer goes out and the row follows.
        """
        if call.audit.recorded:
            return
        outcome: Outcome = (
            "ok" if code is grpc.StatusCode.OK else "denied" if code in _DENIED else "error"
        )
        entry = call.audit.entry(outcome, None if outcome == "ok" else code.name)
        # Settled from here on: the detached write either commits or logs the gap, and a
        # second close (the call cancelled while this one waits) must not add another row.
        call.audit.recorded = True
        write = asyncio.ensure_future(self._write_detached(entry))
        # The loop keeps only weak references to tasks: hold it until it is done.
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        # Waiting past the deadline would only turn the answer into DEADLINE_EXCEEDED (the
        # same bound as every other wait of the call; see pacs_grpc.deadlines).
        wait = deadlines.bounded(self._audit_timeout)
        if wait <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await asyncio.shield(write)

    async def _write_detached(self, entry: AuditEntry) -> None:
        deadline = deadlines.start(None)
        try:
            async with asyncio.timeout(self._audit_timeout):
                async with self._db.autocommit() as conn:
                    await self._audit.insert(conn, entry)
        except Exception:  # noqa: BLE001 - the RPC's outcome stands; the gap is logged
            _log_gap(entry)
        except BaseException:
            # Cancelled at loop shutdown: the row is lost, and that must not go unsaid.
            _log_gap(entry)
            raise
        finally:
            deadlines.reset(deadline)

    async def drain(self) -> None:
        """Wait for audit rows still being written (at shutdown), including those that
        calls still finishing start meanwhile."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


def _log_gap(entry: AuditEntry) -> None:
    _log.exception(
        "audit row not written",
        extra={
            "subject": entry.subject,
            "action": entry.action,
            "outcome": entry.outcome,
            "error_code": entry.error_code,
            "request_id": entry.request_id,
        },
    )
