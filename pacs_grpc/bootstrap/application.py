"""The server's life: built and bound, started, drained; one exit stack owns its cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from grpc_health.v1 import health_pb2

from pacs_grpc.api.metrics import Metrics, MetricsEndpoint
from pacs_grpc.bootstrap.adapters import Adapters
from pacs_grpc.bootstrap.production import StartupError, production_adapters
from pacs_grpc.bootstrap.wiring import Wiring, compose
from pacs_grpc.config import Settings
from pacs_grpc.services.ports import LiveEvents, TxT

_log = logging.getLogger("pacs_grpc.bootstrap")

# A health service name that follows the process, not its dependencies (liveness probes).
LIVENESS_SERVICE = "liveness"


@dataclass
class Application:
    """A composed server and the exit stack that owns its resources.

    `listen` binds the gRPC port; `start` starts the event hub, the sweeper, the health monitor
    and then the server; `stop` drains in the order its docstring gives, and runs every cleanup
    step even after a failed start. Built by `create_application`, or by `assemble` in tests.
    """

    settings: Settings
    wiring: Wiring
    events: LiveEvents
    # Everything to undo, in order: see `stop`.
    cleanup: contextlib.AsyncExitStack
    # Set by `listen`.
    port: int = 0

    def listen(self) -> int:
        """Bind GRPC_HOST:GRPC_PORT (0: any free port); the port bound."""
        settings = self.settings
        try:
            port = self.wiring.server.add_insecure_port(
                f"{settings.grpc_host}:{settings.grpc_port}"
            )
        except RuntimeError:
            port = 0
        if port == 0:
            raise StartupError(
                f"cannot listen on GRPC_HOST:GRPC_PORT ({settings.grpc_port} in use?)"
            )
        self.port = port
        return port

    async def start(self) -> None:
        await self.events.start()
        await self.wiring.sweeper.start()
        await self.wiring.monitor.start()
        # Answers while the process serves, whatever PostgreSQL and storage do: what the
        # Kubernetes liveness probe asks, so an outage does not restart every pod.
        await self.wiring.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.wiring.server.start()
        _log.info(
            "serving",
            extra={"port": self.port, "dependencies_ok": self.wiring.monitor.serving},
        )

    async def stop(self) -> None:
        """Drain in the order that loses no in-flight RPC, then close what start-up opened.

        1. The health monitor stops (so it cannot flip back) and every service goes
           NOT_SERVING: load balancers stop sending new calls.
        2. Annotation event streams end: Watch streams never end on their own, so ending
           them first gives the grace period to the calls that do, and tells viewers to
           resume on another replica.
        3. The server refuses new RPCs and gives running ones SHUTDOWN_GRACE_SECONDS.
        4. The sweeper stops (a batch in progress rolls back); it needs the pool.
        5. The gate's audit rows still being written (refusals are recorded detached from
           their calls) are awaited; they need the pool too.
        6. The pool closes, only now that no RPC, sweep or audit write can use it; then
           object storage and the PACS link.
        7. The metrics endpoint stops last, so the drain itself can be watched.

        Each step is a callback on `cleanup` (registered in reverse, as an exit stack runs
        them): every step runs even when an earlier one fails, and a start-up that failed
        midway ran the same callbacks for what it had opened.
        """
        await self.cleanup.aclose()
        _log.info("stopped")


def assemble(
    settings: Settings,
    adapters: Adapters[TxT],
    cleanup: contextlib.AsyncExitStack,
    *,
    metrics: Metrics | None = None,
) -> Application:
    """The composed server as an Application whose drain is registered on `cleanup`, after
    the resources already there (which therefore close after it); no I/O, no port bound."""
    wiring = compose(settings, adapters, metrics=metrics)
    # Steps 5 to 1 of Application.stop: an exit stack runs the last registered first.
    cleanup.push_async_callback(wiring.gate.drain)
    cleanup.push_async_callback(wiring.sweeper.stop)
    cleanup.push_async_callback(wiring.server.stop, settings.shutdown_grace_seconds)
    cleanup.push_async_callback(adapters.events.stop)
    cleanup.push_async_callback(wiring.health.enter_graceful_shutdown)
    cleanup.push_async_callback(wiring.monitor.stop)
    return Application(settings, wiring, adapters.events, cleanup)


async def create_application(settings: Settings) -> Application:
    """Connect and check the dependencies, compose the server and bind its ports.

    Raises StartupError when the server cannot start, after closing what it had opened.
    """
    metrics = Metrics()
    cleanup = contextlib.AsyncExitStack()
    try:
        endpoint = None
        if settings.metrics_port:
            endpoint = MetricsEndpoint(metrics, settings.metrics_host, settings.metrics_port)
            # Registered first so that it stops last (step 7), though it listens last.
            cleanup.push_async_callback(endpoint.stop)
        adapters = await production_adapters(settings, cleanup, metrics=metrics)
        application = assemble(settings, adapters, cleanup, metrics=metrics)
        application.listen()
        if endpoint is not None:
            try:
                await endpoint.start()
            except OSError:
                raise StartupError(
                    f"cannot listen on METRICS_HOST:METRICS_PORT ({settings.metrics_port} in use?)"
                ) from None
    except BaseException:
        await cleanup.aclose()
        raise
    return application


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    application = await create_application(settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    try:
        await application.start()
        await stop_requested.wait()
        _log.info("stop requested; draining")
    finally:
        await application.stop()
