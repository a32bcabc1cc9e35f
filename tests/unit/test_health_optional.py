"""An optional dependency (the PACS) has its own health service name and never makes the
replica NOT_SERVING: readiness follows PostgreSQL and storage only."""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from pacs_grpc.api.health import HealthMonitor, HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Switch:
    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True

    async def check(self) -> None:
        if not self.up:
            raise ConnectionError(self.name)


def _status(servicer: HealthServicer, service: str) -> int | None:
    # What Check answers for the name.
    status = servicer._server_status.get(service)
    return None if status is None else int(status)


async def test_the_pacs_away_turns_only_its_own_name_not_serving() -> None:
    servicer = HealthServicer()
    database, pacs = Switch("postgres"), Switch("pacs")
    monitor = HealthMonitor(
        servicer,
        ["pacs.v1.MaskService"],
        [database],
        interval_seconds=60,
        timeout_seconds=1,
        optional=[pacs],
    )
    await monitor.start()
    try:
        assert _status(servicer, "pacs") == SERVING
        pacs.up = False
        assert await monitor.probe_once()
        assert _status(servicer, "pacs") == NOT_SERVING
        assert _status(servicer, "") == SERVING
        assert _status(servicer, "pacs.v1.MaskService") == SERVING
        pacs.up = True
        await monitor.probe_once()
        assert _status(servicer, "pacs") == SERVING
        # A required dependency still takes everything down, and leaves "pacs" as it is.
        database.up = False
        assert not await monitor.probe_once()
        assert _status(servicer, "") == NOT_SERVING
        assert _status(servicer, "pacs") == SERVING
    finally:
        await monitor.stop()
