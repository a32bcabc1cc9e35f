"""ObjectStore against a real SeaweedFS (``weed mini``): tickets used the way an AI pipeline
uses them, what storage enforces, checks, conditional copies, streamed uploads, outages."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
import urllib3
from minio import Minio

from pacs_devstack.ports import free_ports
from pacs_devstack.seaweed import SeaweedConfig, SeaweedS3
from pacs_grpc.adapters.storage.objects import ObjectStore
from pacs_grpc.config import StorageSettings
from pacs_grpc.domain.errors import InvalidArgument, NotFound, Unavailable
from pacs_grpc.domain.objects import PostTicket

ACCESS_KEY = "pacs-objects-access"
SECRET_KEY = "pacs-objects-secret-0123456789"
BUCKET = "pacs-objects"
TTL = timedelta(minutes=5)
MIB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(2000)


def _seaweed(data_dir: Path) -> SeaweedS3:
    return SeaweedS3(SeaweedConfig(data_dir, ACCESS_KEY, SECRET_KEY, BUCKET, s3_port=0))


def _settings(endpoint: str, *, secret_key: str = SECRET_KEY) -> StorageSettings:
    return StorageSettings(
        endpoint=endpoint, access_key=ACCESS_KEY, secret_key=secret_key, bucket=BUCKET
    )


@pytest.fixture(scope="module")
def seaweed(scratch_dir: Callable[[str], Path]) -> Iterator[SeaweedS3]:
    server = _seaweed(scratch_dir("s3") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def store(seaweed: SeaweedS3) -> Iterator[ObjectStore]:
    objects = ObjectStore(_settings(seaweed.endpoint))
    yield objects
    objects.close()


@pytest.fixture(scope="module")
def http() -> Iterator[urllib3.PoolManager]:
    """The uploading client: plain HTTP, no retries, closed at the end."""
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)
    yield pool
    pool.clear()


@pytest.fixture(scope="module")
def admin(seaweed: SeaweedS3) -> Iterator[Minio]:
    """Direct SDK access for setting up and inspecting state behind the store's back."""
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)
    yield seaweed.client(pool)
    pool.clear()


def _key() -> str:
    return f"uploads/{secrets.token_hex(6)}/slice.png"


async def _send(
    http: urllib3.PoolManager, method: str, url: str, **kwargs: Any
) -> urllib3.BaseHTTPResponse:
    return await asyncio.to_thread(http.request, method, url, **kwargs)


async def _post(
    http: urllib3.PoolManager,
    ticket: PostTicket,
    body: bytes,
    **overrides: str,
) -> urllib3.BaseHTTPResponse:
    """A browser-style form upload: the ticket's fields (some overridden), then the file."""
    fields: list[tuple[str, Any]] = list({**ticket.fields, **overrides}.items())
    fields.append(("file", ("slice.png", body, "application/octet-stream")))
    return await _send(http, "POST", ticket.url, fields=fields)


async def _chunks(
    data: bytes, size: int = MIB, *, fail_after: int | None = None
) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if fail_after is not None and start >= fail_after:
            raise RuntimeError("the pipeline crashed")
        yield data[start : start + size]
        await asyncio.sleep(0)


def _chunk_size(total: int) -> int:
    # Several chunks also for small objects, so a stream can overshoot after a good prefix.
    return MIB if total > MIB else 10


def _pending_multipart(admin: Minio, key: str) -> list[Any]:
    # No public SDK call lists unfinished multipart uploads.
    return list(admin._list_multipart_uploads(BUCKET, prefix=key).uploads)


# -- POST policy tickets --------------------------------------------------------------------------


async def test_post_ticket_upload_is_recorded_with_size_type_and_md5(
    store: ObjectStore, http: urllib3.PoolManager
) -> None:
    key = _key()
    ticket = store.presign_post(key, content_type="image/png", size=len(PNG), ttl=TTL)
    assert list(ticket.fields)[:2] == ["key", "Content-Type"]
    assert ticket.url.endswith(f"/{BUCKET}")
    assert abs(ticket.expires_at - (datetime.now(UTC) + TTL)) < timedelta(seconds=2)

    response = await _post(http, ticket, PNG)

    assert response.status in (200, 201, 204), response.data
    info = await store.stat(key)
    assert info is not None
    assert (info.key, info.size, info.content_type) == (key, len(PNG), "image/png")
    assert info.etag == hashlib.md5(PNG).hexdigest()


# The statuses and codes SeaweedFS 4.48 answers with.
@pytest.mark.parametrize(
    ("body", "overrides", "status", "code"),
    [
        pytest.param(PNG + b"x", {}, 400, "EntityTooLarge", id="one-byte-too-many"),
        pytest.param(PNG[:-1], {}, 400, "EntityTooSmall", id="one-byte-short"),
        pytest.param(PNG, {"Content-Type": "image/jpeg"}, 403, "AccessDenied", id="other-type"),
        pytest.param(PNG, {"key": "uploads/x/slice.png"}, 403, "AccessDenied", id="other-key"),
        pytest.param(
            PNG, {"x-amz-signature": "0" * 64}, 403, "SignatureDoesNotMatch", id="tampered"
        ),
    ],
)
async def test_storage_rejects_a_post_that_breaks_the_ticket(
    store: ObjectStore,
    http: urllib3.PoolManager,
    body: bytes,
    overrides: dict[str, str],
    status: int,
    code: str,
) -> None:
    key = _key()
    ticket = store.presign_post(key, content_type="image/png", size=len(PNG), ttl=TTL)

    response = await _post(http, ticket, body, **overrides)

    assert response.status == status, response.data
    assert f"<Code>{code}</Code>".encode() in response.data
    assert await store.stat(key) is None
    if "key" in overrides:
        assert await store.stat(overrides["key"]) is None


async def test_expired_post_and_put_tickets_get_403(
    store: ObjectStore, http: urllib3.PoolManager
) -> None:
    key = _key()
    ttl = timedelta(seconds=1)
    post = store.presign_post(key, content_type="image/png", size=len(PNG), ttl=ttl)
    put = store.presign_put(key, content_type="image/png", ttl=ttl)
    await asyncio.sleep(2)

    posted = await _post(http, post, PNG)
    putted = await _send(http, "PUT", put.url, body=PNG, headers=put.headers)

    assert posted.status == 403, posted.data
    assert b"Policy expired" in posted.data
    assert b"Request has expired" in putted.data
    assert putted.status == 403, putted.data
    assert await store.stat(key) is None


# -- PUT and GET tickets -------------------------------------------------------------------------


async def test_put_ticket_upload_is_recorded(store: ObjectStore, http: urllib3.PoolManager) -> None:
    key = _key()
    ticket = store.presign_put(key, content_type="image/png", ttl=TTL)
    assert ticket.headers == {"Content-Type": "image/png"}
    assert parse_qs(urlsplit(ticket.url).query)["X-Amz-Expires"] == [str(int(TTL.total_seconds()))]

    response = await _send(http, "PUT", ticket.url, body=PNG, headers=ticket.headers)

    assert response.status == 200, response.data
    info = await store.stat(key)
    assert info is not None
    assert (info.size, info.content_type, info.etag) == (
        len(PNG),
        "image/png",
        hashlib.md5(PNG).hexdigest(),
    )


async def test_get_ticket_returns_the_bytes_with_the_pinned_content_type(
    store: ObjectStore, http: urllib3.PoolManager
) -> None:
    key = _key()
    await store.put_stream(
        key, _chunks(PNG), size=len(PNG), content_type="application/octet-stream"
    )

    url, expires_at = store.presign_get(key, content_type="image/png", ttl=TTL)
    response = await _send(http, "GET", url)

    assert response.status == 200, response.data
    assert response.data == PNG
    assert response.headers["Content-Type"] == "image/png"
    assert expires_at > datetime.now(UTC) + TTL - timedelta(seconds=2)


async def test_tickets_are_signed_for_the_public_endpoint(
    seaweed: SeaweedS3, http: urllib3.PoolManager
) -> None:
    public = seaweed.endpoint.replace("127.0.0.1", "localhost")
    store = ObjectStore(_settings(seaweed.endpoint), public_endpoint=public)
    try:
        key = _key()
        ticket = store.presign_put(key, content_type="image/png", ttl=TTL)
        assert ticket.url.startswith(f"{public}/")
        # The same signed request sent to another host name no longer matches its signature.
        internal = urlunsplit(
            urlsplit(ticket.url)._replace(netloc=urlsplit(seaweed.endpoint).netloc)
        )
        refused = await _send(http, "PUT", internal, body=PNG, headers=ticket.headers)
        accepted = await _send(http, "PUT", ticket.url, body=PNG, headers=ticket.headers)

        assert refused.status == 403, refused.data
        assert accepted.status == 200, accepted.data
        assert store.presign_post(key, content_type="image/png", size=1, ttl=TTL).url == (
            f"{public}/{BUCKET}"
        )
    finally:
        store.close()


def test_presigning_uses_no_network_and_takes_microseconds() -> None:
    (port,) = free_ports(1, "127.0.0.1")
    store = ObjectStore(_settings(f"http://127.0.0.1:{port}"))  # nothing listens there
    try:
        store.presign_put(_key(), content_type="image/png", ttl=TTL)
        store.presign_get(_key(), content_type="image/png", ttl=TTL)
        started = time.perf_counter()
        for i in range(1000):
            store.presign_post(f"uploads/{i}/slice.png", content_type="image/png", size=i, ttl=TTL)
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    print(f"1000 presign_post calls: {elapsed * 1000:.1f} ms")
    assert elapsed < 2.0


# -- checks on what arrived ----------------------------------------------------------------------


async def test_stat_of_a_missing_key_is_none(store: ObjectStore) -> None:
    assert await store.stat(_key()) is None


async def test_read_head_returns_the_first_bytes(store: ObjectStore) -> None:
    key, short, empty = _key(), _key(), _key()
    await store.put_stream(key, _chunks(PNG), size=len(PNG), content_type="image/png")
    await store.put_stream(short, _chunks(b"abc"), size=3, content_type="image/png")
    await store.put_stream(empty, _chunks(b""), size=0, content_type="image/png")

    assert await store.read_head(key, 8) == PNG[:8]
    assert await store.read_head(short, 8) == b"abc"
    assert await store.read_head(empty, 8) == b""
    with pytest.raises(NotFound):
        await store.read_head(_key(), 8)


# -- conditional copy ----------------------------------------------------------------------------


async def test_a_version_stays_readable_after_an_overwrite(
    store: ObjectStore, http: urllib3.PoolManager
) -> None:
    """What completion relies on: the checked version is what downloads get."""
    assert await store.versioning_enabled()
    key = _key()
    await store.put_stream(key, _chunks(PNG), size=len(PNG), content_type="image/png")
    checked = await store.stat(key)
    assert checked is not None
    assert checked.version_id
    forged = b"\x89PNG\r\n\x1a\n" + b"something else entirely"
    rewritten = await store.put_stream(
        key, _chunks(forged), size=len(forged), content_type="image/png"
    )
    assert rewritten.version_id not in (None, checked.version_id)
    url, _ = store.presign_get(
        key, content_type="image/png", ttl=timedelta(minutes=5), version_id=checked.version_id
    )
    assert http.request("GET", url).data == PNG


async def test_latest_versions_lists_each_live_key_once_across_pages(
    store: ObjectStore, admin: Minio
) -> None:
    """What completion reads instead of a HEAD per slice: one entry per key, its newest
    version, and nothing for a key whose newest entry is a delete marker."""
    prefix = f"listing/{secrets.token_hex(6)}/"
    infos = {}
    for name, body in (("a", b"first"), ("b", b"second"), ("c", b"third"), ("a", b"rewritten")):
        infos[name] = await store.put_stream(
            prefix + name, _chunks(body), size=len(body), content_type="image/png"
        )
    admin.remove_object(BUCKET, prefix + "c")  # versioned: leaves a delete marker on top
    listed = await store.latest_versions(prefix, page_size=2)
    assert set(listed) == {prefix + "a", prefix + "b"}
    for name in ("a", "b"):
        entry = listed[prefix + name]
        assert (entry.version_id, entry.size, entry.etag) == (
            infos[name].version_id, infos[name].size, infos[name].etag
        )  # fmt: skip
    assert await store.latest_versions(f"listing/{secrets.token_hex(6)}/") == {}


async def test_delete_removes_every_version(store: ObjectStore, admin: Minio) -> None:
    key = _key()
    for body in (b"one", b"two", b"three"):
        await store.put_stream(key, _chunks(body), size=len(body), content_type="image/png")
    assert await store.delete([key]) == []
    left = [v for v in admin.list_objects(BUCKET, prefix=key, include_version=True)]
    assert left == []


async def test_put_stream_uploads_in_parts_and_returns_the_md5(
    store: ObjectStore, admin: Minio, http: urllib3.PoolManager
) -> None:
    key, data = _key(), secrets.token_bytes(12 * MIB + 123)

    info = await store.put_stream(key, _chunks(data), size=len(data), content_type="image/png")

    assert (info.key, info.size, info.etag) == (key, len(data), hashlib.md5(data).hexdigest())
    stored = await store.stat(key)
    assert stored is not None
    assert (stored.size, stored.content_type) == (len(data), "image/png")
    assert stored.etag.endswith("-3")  # three 5 MiB parts: storage's ETag is not the MD5
    url, _ = store.presign_get(key, content_type="image/png", ttl=TTL)
    assert hashlib.md5((await _send(http, "GET", url)).data).hexdigest() == info.etag
    assert _pending_multipart(admin, key) == []


@pytest.mark.parametrize(
    ("declared", "sent", "fail_after", "error"),
    [
        pytest.param(12 * MIB, 11 * MIB, None, InvalidArgument, id="too-few-multipart"),
        pytest.param(12 * MIB, 12 * MIB + 1, None, InvalidArgument, id="too-many-multipart"),
        pytest.param(100, 99, None, InvalidArgument, id="too-few-single"),
        pytest.param(100, 101, None, InvalidArgument, id="too-many-single"),
        pytest.param(0, 1, None, InvalidArgument, id="too-many-empty"),
        pytest.param(12 * MIB, 12 * MIB, 7 * MIB, RuntimeError, id="raises-after-a-part"),
        pytest.param(100, 100, 0, RuntimeError, id="raises-at-once"),
    ],
)
async def test_a_broken_stream_leaves_nothing_under_the_key(
    store: ObjectStore,
    admin: Minio,
    declared: int,
    sent: int,
    fail_after: int | None,
    error: type[Exception],
) -> None:
    key, data = _key(), secrets.token_bytes(sent)

    with pytest.raises(error):
        await store.put_stream(
            key,
            _chunks(data, _chunk_size(sent), fail_after=fail_after),
            size=declared,
            content_type="image/png",
        )

    assert await store.stat(key) is None
    assert _pending_multipart(admin, key) == []


@pytest.mark.parametrize(
    ("declared", "sent", "fail_after"),
    [
        pytest.param(100, 101, None, id="too-many-single"),
        pytest.param(12 * MIB, 12 * MIB + 1, None, id="too-many-multipart"),
        pytest.param(0, 1, None, id="too-many-empty"),
        pytest.param(12 * MIB, 12 * MIB, 11 * MIB, id="raises-near-the-end"),
    ],
)
async def test_a_broken_stream_does_not_replace_what_was_there(
    store: ObjectStore, declared: int, sent: int, fail_after: int | None
) -> None:
    key = _key()
    before = await store.put_stream(key, _chunks(PNG), size=len(PNG), content_type="image/png")

    with pytest.raises((InvalidArgument, RuntimeError)):
        await store.put_stream(
            key,
            _chunks(bytes(sent), _chunk_size(sent), fail_after=fail_after),
            size=declared,
            content_type="image/png",
        )

    assert await store.stat(key) == before


async def test_a_cancelled_stream_frees_its_worker_and_leaves_nothing(
    seaweed: SeaweedS3, admin: Minio
) -> None:
    store = ObjectStore(_settings(seaweed.endpoint), max_workers=1)
    stalled = asyncio.Event()

    async def stalls_after_six_mib() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield bytes(MIB)
        stalled.set()
        await asyncio.Event().wait()
        yield b""  # pragma: no cover

    try:
        key = _key()
        upload = asyncio.create_task(
            store.put_stream(key, stalls_after_six_mib(), size=12 * MIB, content_type="image/png")
        )
        await asyncio.wait_for(stalled.wait(), 10)
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
        # The only worker must come back, or this stat would wait forever.
        assert await asyncio.wait_for(store.stat(key), 10) is None
        assert _pending_multipart(admin, key) == []
    finally:
        store.close()


# -- delete --------------------------------------------------------------------------------------


async def test_delete_removes_several_keys_and_a_missing_one_is_no_failure(
    store: ObjectStore,
) -> None:
    keys = [_key() for _ in range(3)]
    for key in keys:
        await store.put_stream(key, _chunks(b"x"), size=1, content_type="image/png")

    assert await store.delete([*keys, _key()]) == []
    assert await store.delete([]) == []
    for key in keys:
        assert await store.stat(key) is None


# -- outages and misconfiguration ----------------------------------------------------------------


async def test_wrong_credentials_are_unavailable_and_logged_once_by_code(
    seaweed: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-secret-0123456789"
    store = ObjectStore(_settings(seaweed.endpoint, secret_key=wrong))
    try:
        with caplog.at_level(logging.ERROR, logger="pacs_grpc.adapters.storage.objects"):
            for _ in range(3):
                with pytest.raises(Unavailable) as head:
                    await store.stat(_key())
                with pytest.raises(Unavailable) as get:
                    await store.read_head(_key(), 8)
                for caught in (head, get):
                    assert caught.value.message == "object storage unavailable, retry shortly"
    finally:
        store.close()
    # HEAD responses have no body, so stat can only report the status as AccessDenied.
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == [
        "object storage refused our request (S3 error AccessDenied); check S3_* settings",
        "object storage refused our request (S3 error SignatureDoesNotMatch); check S3_* settings",
    ]
    assert wrong not in caplog.text
    assert ACCESS_KEY not in caplog.text


@pytest.mark.slow
async def test_killed_storage_is_unavailable_at_once_and_presigning_still_works(
    scratch_dir: Callable[[str], Path],
) -> None:
    server = _seaweed(scratch_dir("s3") / "data")
    server.start()
    store = ObjectStore(_settings(server.endpoint))
    try:
        key = _key()
        await store.put_stream(key, _chunks(PNG), size=len(PNG), content_type="image/png")
        server.kill()

        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "stat": lambda: store.stat(key),
            "read_head": lambda: store.read_head(key, 8),
            "versioning": store.versioning_enabled,
            "delete": lambda: store.delete([key]),
            "put_stream": lambda: store.put_stream(
                _key(), _chunks(PNG), size=len(PNG), content_type="image/png"
            ),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                await asyncio.wait_for(call(), 10)
            took = time.monotonic() - started
            assert took < 3, (name, took)
            assert caught.value.message == "object storage unavailable, retry shortly"

        assert store.presign_post(key, content_type="image/png", size=1, ttl=TTL).fields
        assert store.presign_put(key, content_type="image/png", ttl=TTL).url
        assert store.presign_get(key, content_type="image/png", ttl=TTL)[0]
    finally:
        store.close()
        server.stop()
