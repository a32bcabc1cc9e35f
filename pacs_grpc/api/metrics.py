"""Prometheus metrics: the application's own registry and the HTTP endpoint that serves it.

Labels take values from fixed sets only (our RPC names, gRPC status names, limit names), never
users, projects, UIDs or anything else a client chooses: metrics are read by people who may
not see patient data, and every distinct label value is a new series kept in memory.

The registry belongs to the application rather than being prometheus_client's global one, so
several servers in one process (tests) keep apart. The endpoint runs on the event loop, so
collectors read the pool's state from the thread that changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pacs_grpc.api.access import ACCESS_BY_METHOD

UNKNOWN_METHOD = "unknown"
RPC_METHODS: frozenset[str] = frozenset(
    {
        *ACCESS_BY_METHOD,
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)
# 200 ms is the design's target for an API response.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def method_label(method: str) -> str:
    """The method's full name when it is one of ours, else "unknown": bounded cardinality."""
    return method if method in RPC_METHODS else UNKNOWN_METHOD


class PoolCollector(Collector):
    """Connection pool gauges and counters, read from psycopg_pool's get_stats() on scrape."""

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()

        def gauge(name: str, help_text: str, key: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_text, value=stats.get(key, 0))

        def counter(name: str, help_text: str, key: str, scale: float = 1.0) -> Metric:
            return CounterMetricFamily(name, help_text, value=stats.get(key, 0) * scale)

        yield gauge("pacs_db_pool_connections", "Connections the pool holds now", "pool_size")
        yield gauge("pacs_db_pool_idle_connections", "Connections ready for use", "pool_available")
        yield gauge("pacs_db_pool_max_connections", "Most connections allowed", "pool_max")
        yield gauge(
            "pacs_db_pool_waiting", "Callers queued for a connection now", "requests_waiting"
        )
        yield counter("pacs_db_pool_requests", "Connections asked of the pool", "requests_num")
        yield counter("pacs_db_pool_queued", "Requests that had to wait", "requests_queued")
        yield counter("pacs_db_pool_errors", "Requests that got no connection", "requests_errors")
        yield counter(
            "pacs_db_pool_wait_seconds", "Time spent waiting for a connection", "requests_wait_ms",
            scale=0.001,
        )  # fmt: skip
        yield counter(
            "pacs_db_pool_connections_lost", "Connections found broken", "connections_lost"
        )


class Metrics:
    """Every metric the server exports; the parts of the server report through its methods."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._rpcs = Counter(
            "pacs_rpc_handled",
            "RPCs finished, by method and status",
            ["method", "code"],
            registry=r,
        )
        self._latency = Histogram(
            "pacs_rpc_duration_seconds", "Time to answer an RPC (not server streams)", ["method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # labels() validates and locks on every call; the children, once made, are reused
        # (methods come from RPC_METHODS and codes from grpc.StatusCode: bounded).
        self._rpc_children: dict[tuple[str, grpc.StatusCode], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._rate_limited = Counter(
            "pacs_rate_limited", "Calls refused by a per-user limit", ["limit"], registry=r
        )
        self._tickets = Counter("pacs_upload_tickets_issued", "Upload tickets issued", registry=r)
        self._completed = Counter(
            "pacs_upload_slices_completed",
            "Slices confirmed by CompleteUpload (a repeated completion counts again)",
            registry=r,
        )
        self._pushed_masks = Counter(
            "pacs_pushed_masks", "Slices recorded by PushMasks", registry=r
        )
        self._pushed_bytes = Counter("pacs_pushed_bytes", "Bytes received by PushMasks", registry=r)
        self._pacs_requests = Counter(
            "pacs_pacs_requests",
            "Requests to the PACS, by operation (qido, metadata, stow) and outcome "
            "(ok, not_found, error, refused: failed fast by the breaker)",
            ["operation", "outcome"],
            registry=r,
        )
        self._pacs_warnings = Counter(
            "pacs_pacs_validation_warnings",
            "Writes let through by PACS_VALIDATE=warn that enforce would have refused, by reason",
            ["reason"],
            registry=r,
        )
        self._backlog = Gauge(
            "pacs_storage_deletion_backlog",
            "Objects queued for deletion from storage, as of the last sweeper round",
            registry=r,
        )

    def rpc_finished(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None:
        """`seconds` is None for server streams, whose duration is how long a client watched."""
        label = method_label(method)
        counter = self._rpc_children.get((label, code))
        if counter is None:
            counter = self._rpc_children[label, code] = self._rpcs.labels(
                method=label, code=code.name
            )
        counter.inc()
        if seconds is not None:
            latency = self._latency_children.get(label)
            if latency is None:
                latency = self._latency_children[label] = self._latency.labels(method=label)
            latency.observe(seconds)

    def rate_limited(self, limit: str) -> None:
        self._rate_limited.labels(limit=limit).inc()

    def tickets_issued(self, count: int) -> None:
        self._tickets.inc(count)

    def slices_completed(self, count: int) -> None:
        self._completed.inc(count)

    def masks_pushed(self, count: int, received_bytes: int) -> None:
        self._pushed_masks.inc(count)
        self._pushed_bytes.inc(received_bytes)

    def pacs_request(self, operation: str, outcome: str) -> None:
        self._pacs_requests.labels(operation=operation, outcome=outcome).inc()

    def pacs_warning(self, reason: str) -> None:
        self._pacs_warnings.labels(reason=reason).inc()

    def storage_backlog(self, rows: int) -> None:
        self._backlog.set(rows)

    def watch_pool(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self.registry.register(PoolCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsEndpoint:
    """`GET /metrics` over HTTP/1.1 on asyncio: one response per connection, bounded requests."""

    def __init__(
        self, metrics: Metrics, host: str, port: int, *, request_timeout: float = 5.0
    ) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._timeout = request_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        """Listen and serve; returns the bound port. Raises OSError when it cannot listen."""
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, limit=_MAX_LINE_BYTES
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._connections):
            writer.close()
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            async with asyncio.timeout(self._timeout):
                status, body = await self._respond(reader)
                writer.write(_response(status, body))
                await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that is slow, gone or speaking nonsense gets nothing more
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, bytes]:
        request_line = (await reader.readline()).decode("latin-1").split()
        for _ in range(_MAX_HEADERS):
            if (await reader.readline()).strip() == b"":
                break
        else:
            return "431 Request Header Fields Too Large", b""
        if len(request_line) != 3 or not request_line[2].startswith("HTTP/"):
            return "400 Bad Request", b""
        method, target = request_line[0], request_line[1]
        if target.split("?", 1)[0] != "/metrics":
            return "404 Not Found", b""
        if method != "GET":
            return "405 Method Not Allowed", b""
        return "200 OK", self._metrics.render()


_MAX_LINE_BYTES = 8192
_MAX_HEADERS = 100


def _response(status: str, body: bytes) -> bytes:
    content_type = CONTENT_TYPE_PLAIN_0_0_4 if status == "200 OK" else "text/plain"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
