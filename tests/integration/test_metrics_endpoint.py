"""The /metrics endpoint on loopback, spoken to as Prometheus and as careless clients would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pacs_grpc.api.metrics import Metrics, MetricsEndpoint


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Metrics, int]]:
    metrics = Metrics()
    served = MetricsEndpoint(metrics, "127.0.0.1", 0, request_timeout=0.5)
    port = await served.start()
    try:
        yield metrics, port
    finally:
        await served.stop()


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        # Closing with part of a request unread makes the kernel answer with a reset.
        return b""
    finally:
        writer.close()
        await writer.wait_closed()


def _split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status, headers, body


async def test_a_scrape_gets_the_registry_in_the_text_format(
    endpoint: tuple[Metrics, int],
) -> None:
    metrics, port = endpoint
    metrics.tickets_issued(42)
    response = await _exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: pod:9464\r\nAccept: text/plain\r\n\r\n"
    )
    status, headers, body = _split(response)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    assert values["pacs_upload_tickets_issued_total"] == 42


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"GET /metrics/../etc HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        (b"hello\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", "HTTP/1.1 431"),
    ],
)
async def test_anything_but_a_get_of_metrics_is_refused(
    endpoint: tuple[Metrics, int], request_bytes: bytes, status: str
) -> None:
    _, port = endpoint
    got, _, body = _split(await _exchange(port, request_bytes))
    assert got.startswith(status)
    assert b"pacs_" not in body


async def test_an_overlong_line_or_a_silent_client_is_cut_off(
    endpoint: tuple[Metrics, int],
) -> None:
    _, port = endpoint
    assert await _exchange(port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n") == b""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # Nothing sent: the endpoint closes the connection once its request timeout passes.
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_port_in_use_is_an_error_at_start(endpoint: tuple[Metrics, int]) -> None:
    metrics, port = endpoint
    with pytest.raises(OSError, match="in use"):
        await MetricsEndpoint(metrics, "127.0.0.1", port).start()
