"""grpc.health.v1 driven by probes of PostgreSQL and object storage.

Kubernetes and Envoy route by these statuses, so they must follow the
dependencies closely: a background loop probes both every interval and flips
every service to NOT_SERVING as soon as either stops answering, and back to
SERVING when both answer again.

Optional dependencies (the PACS) are reported under their own service name only: a
replica whose PACS is away still serves everything that does not need it, so it must
stay ready, and its calls that do need the PACS answer UNAVAILABLE on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2

# The asyncio servicer; `health.aio` re-exports it, but not visibly to mypy.
from grpc_health.v1._async import HealthServicer

from pacs_grpc.services.ports import Probe

_log = logging.getLogger(__name__)

__all__ = ["HealthMonitor", "HealthServicer", "Probe"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor:
    """Publishes grpc.health.v1: every named service (and "") is SERVING only while every required
    probe passes; each optional probe is published under its own name and affects nothing else.

    All probes run together every `interval_seconds`, each bounded by `timeout_seconds`, and a
    status is set only when it changes. One instance per server, on its event loop.
    """

    def __init__(
        self,
        servicer: HealthServicer,
        service_names: Sequence[str],
        probes: Sequence[Probe],
        *,
        interval_seconds: float,
        timeout_seconds: float,
        optional: Sequence[Probe] = (),
    ) -> None:
        self._servicer = servicer
        self._optional = optional
        self._optional_serving: dict[str, bool] = {}
        self._service_names = ("", *service_names)
        self._probes = probes
        self._interval = interval_seconds
        self._timeout = timeout_seconds
        self._serving: bool | None = None
        self._failing: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    async def start(self) -> None:
        """Publish NOT_SERVING, probe once, then keep probing in the background."""
        await self._publish(serving=False)
        await self.probe_once()
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def probe_once(self) -> bool:
        probes = (*self._probes, *self._optional)
        outcomes = await asyncio.gather(*(self._check(probe) for probe in probes))
        results = outcomes[: len(self._probes)]
        for probe, ok in zip(self._optional, outcomes[len(self._probes) :], strict=True):
            await self._publish_optional(probe.name, serving=ok)
        failing = {probe.name for probe, ok in zip(self._probes, results, strict=True) if not ok}
        for name in sorted(failing - self._failing):
            _log.warning("dependency stopped answering", extra={"dependency": name})
        for name in sorted(self._failing - failing):
            _log.info("dependency answers again", extra={"dependency": name})
        self._failing = failing
        await self._publish(serving=not failing)
        return not failing

    async def _check(self, probe: Probe) -> bool:
        try:
            await asyncio.wait_for(probe.check(), self._timeout)
        except Exception as error:  # noqa: BLE001 - any failure means "not answering"
            _log.debug(
                "probe failed", extra={"dependency": probe.name, "error": type(error).__name__}
            )
            return False
        return True

    async def _publish(self, *, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        status = SERVING if serving else NOT_SERVING
        for name in self._service_names:
            await self._servicer.set(name, status)
        _log.info("health", extra={"status": "SERVING" if serving else "NOT_SERVING"})

    async def _publish_optional(self, name: str, *, serving: bool) -> None:
        before = self._optional_serving.get(name)
        if serving == before:
            return
        self._optional_serving[name] = serving
        await self._servicer.set(name, SERVING if serving else NOT_SERVING)
        if before is not None or not serving:
            _log.log(
                logging.INFO if serving else logging.WARNING,
                "optional dependency answers" if serving else "optional dependency away",
                extra={"dependency": name},
            )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe_once()
