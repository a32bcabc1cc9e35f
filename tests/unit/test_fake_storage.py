"""FakeObjectStorage does what tests/integration/test_object_store.py shows the real adapter
doing, where a use case could tell the difference."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from pacs_grpc.domain.errors import InvalidArgument, Unavailable
from tests.fakes.clock import FakeClock
from tests.fakes.storage import PART_SIZE, FakeObjectStorage, md5

MIB = 1024 * 1024


@pytest.fixture
def storage() -> FakeObjectStorage:
    return FakeObjectStorage(FakeClock())


class _Stream:
    """Chunks of `data` that record whether put_stream closed them, as the adapter always does."""

    def __init__(self, data: bytes) -> None:
        self._pieces = iter([data[i : i + MIB] for i in range(0, len(data), MIB)])
        self.closed = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> bytes:
        piece = next(self._pieces, None)
        if piece is None:
            raise StopAsyncIteration
        return piece

    async def aclose(self) -> None:
        self.closed = True


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), MIB):
        yield data[start : start + MIB]


async def test_put_stream_returns_the_md5_it_sent_while_storage_keeps_its_multipart_etag(
    storage: FakeObjectStorage,
) -> None:
    data = b"x" * (12 * MIB + 123)
    info = await storage.put_stream("k", _chunks(data), size=len(data), content_type="image/png")
    assert info.etag == hashlib.md5(data).hexdigest()
    stored = await storage.stat("k")
    assert stored is not None
    assert stored.etag.endswith("-3")  # three parts of PART_SIZE: not the MD5
    assert stored.etag != info.etag
    assert (await storage.latest_versions("k"))["k"].etag == stored.etag


async def test_an_object_of_one_part_has_its_md5_as_etag(storage: FakeObjectStorage) -> None:
    data = b"x" * PART_SIZE
    info = await storage.put_stream("k", _chunks(data), size=len(data), content_type="image/png")
    stored = await storage.stat("k")
    assert stored is not None
    assert stored.etag == info.etag == md5(data)


@pytest.mark.parametrize("data", [b"abc", b"abcd"], ids=["exact", "too-long"])
async def test_put_stream_closes_the_stream_it_read(
    storage: FakeObjectStorage, data: bytes
) -> None:
    stream = _Stream(data)
    try:
        await storage.put_stream("k", stream, size=3, content_type="image/png")
    except InvalidArgument:
        assert len(data) > 3
    assert stream.closed


async def test_a_negative_size_is_refused_before_storage_is_called(
    storage: FakeObjectStorage,
) -> None:
    with pytest.raises(InvalidArgument, match="size"):
        await storage.put_stream("k", _chunks(b""), size=-1, content_type="image/png")
    assert storage.calls == []


async def test_deleting_no_keys_calls_nothing_even_when_storage_is_down(
    storage: FakeObjectStorage,
) -> None:
    storage.down = True
    assert await storage.delete([]) == []
    assert (storage.calls, storage.deletes) == ([], [])
    with pytest.raises(Unavailable):
        await storage.delete(["k"])
