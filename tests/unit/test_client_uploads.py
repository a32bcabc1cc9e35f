"""Upload and download orchestration: batches, retries, new tickets and progress, on fakes.

The real stack runs the same code in tests/e2e/test_python_client.py; here storage and the
server are scripted so every failure path can be reached on purpose.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pacs.client.downloads import DownloadError, MaskDownloader
from pacs.client.slices import Slice, from_bytes
from pacs.client.transfer import TransferFailed
from pacs.client.uploads import MaskUploader, UploadError, UploadOptions
from pacs.v1 import mask_pb2

from tests.support.png import png

ANNOTATION, GROUP = 5, 9


@dataclass
class FakeMasks:
    """CreateUploadUrls and CompleteUpload as the server answers them."""

    ticket_calls: list[list[int]] = field(default_factory=list)
    completions: list[list[str]] = field(default_factory=list)
    issued: int = 0

    def CreateUploadUrls(
        self, request: mask_pb2.CreateUploadUrlsRequest
    ) -> mask_pb2.CreateUploadUrlsResponse:
        assert len(request.slices) <= 1000
        self.ticket_calls.append([s.slice_index for s in request.slices])
        tickets = []
        for s in request.slices:
            self.issued += 1
            tickets.append(
                mask_pb2.UploadTicket(
                    upload_id=f"u{self.issued}", slice_index=s.slice_index, url="http://s3/x"
                )
            )
        return mask_pb2.CreateUploadUrlsResponse(tickets=tickets)

    def CompleteUpload(
        self, request: mask_pb2.CompleteUploadRequest
    ) -> mask_pb2.CompleteUploadResponse:
        self.completions.append([u.upload_id for u in request.uploads])
        done = sum(len(c) for c in self.completions)
        return mask_pb2.CompleteUploadResponse(
            mask_group=mask_pb2.MaskGroup(id=GROUP, completed_slices=done)
        )


@dataclass
class FakeStorage:
    """Fails the listed slices' attempts in order (None succeeds), then accepts."""

    script: dict[int, list[TransferFailed | None]] = field(default_factory=dict)
    attempts: Counter[int] = field(default_factory=Counter)
    stored: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def upload(self, ticket: mask_pb2.UploadTicket, body: bytes, content_type: str) -> None:
        index = ticket.slice_index
        with self.lock:
            self.attempts[index] += 1
            planned = self.script.get(index, [])
            failure = planned.pop(0) if planned else None
        if failure is not None:
            raise failure
        with self.lock:
            self.stored[index] = (ticket.upload_id, body)


def transient() -> TransferFailed:
    return TransferFailed("HTTP 503", transient=True)


def refused() -> TransferFailed:
    return TransferFailed("HTTP 403", refused=True)


def slices(count: int) -> list[Slice]:
    return [from_bytes(i, png(4, 4, i)) for i in range(count)]


def uploader(masks: FakeMasks, storage: FakeStorage, **options: Any) -> MaskUploader:
    return MaskUploader(
        masks, storage, UploadOptions(**options), sleep=lambda _: None, draw=lambda: 0.0
    )


def test_up_to_1000_slices_take_one_ticket_call_and_one_completion() -> None:
    masks, storage = FakeMasks(), FakeStorage()
    stats = uploader(masks, storage).upload(ANNOTATION, GROUP, slices(100))
    assert len(masks.ticket_calls) == 1
    assert len(masks.completions) == 1
    assert sorted(storage.stored) == list(range(100))
    assert stats.uploaded == 100
    assert stats.retries == 0
    assert stats.group is not None
    assert stats.group.completed_slices == 100
    assert stats.bytes_sent == sum(s.size for s in slices(100))


def test_larger_series_go_in_batches_of_at_most_1000() -> None:
    masks, storage = FakeMasks(), FakeStorage()
    many = [from_bytes(i, b"x") for i in range(2500)]
    uploader(masks, storage, concurrency=16).upload(ANNOTATION, GROUP, many)
    assert [len(call) for call in masks.ticket_calls] == [1000, 1000, 500]
    assert [len(c) for c in masks.completions] == [1000, 1000, 500]


def test_transient_failures_are_retried_on_the_same_ticket() -> None:
    masks = FakeMasks()
    storage = FakeStorage(script={3: [transient(), transient()], 7: [transient()]})
    stats = uploader(masks, storage).upload(ANNOTATION, GROUP, slices(10))
    assert storage.attempts[3] == 3
    assert storage.attempts[7] == 2
    assert stats.retries == 3
    assert len(masks.ticket_calls) == 1
    (completed,) = masks.completions
    assert sorted(completed) == sorted(upload_id for upload_id, _ in storage.stored.values())


def test_a_refused_ticket_gets_a_new_ticket_for_that_slice_only() -> None:
    masks = FakeMasks()
    storage = FakeStorage(script={2: [refused()], 6: [refused()]})
    stats = uploader(masks, storage).upload(ANNOTATION, GROUP, slices(8))
    assert masks.ticket_calls == [list(range(8)), [2, 6]]
    (completed,) = masks.completions
    # The completion names the tickets the slices were finally uploaded with.
    assert len(completed) == 8
    assert storage.stored[2][0] in completed
    assert storage.stored[2][0] not in {f"u{n}" for n in range(1, 9)}
    assert stats.retries == 2


def test_slices_that_keep_failing_are_reported_and_the_rest_recorded() -> None:
    masks = FakeMasks()
    storage = FakeStorage(
        script={
            1: [transient()] * 4,
            4: [TransferFailed("HTTP 400")],
            5: [refused()] * 3,
        }
    )
    with pytest.raises(UploadError) as raised:
        uploader(masks, storage, attempts=4, ticket_rounds=3).upload(ANNOTATION, GROUP, slices(6))
    error = raised.value
    assert error.failed == {
        1: "HTTP 503",
        4: "HTTP 400",
        5: "storage refused every ticket (HTTP 403)",
    }
    assert error.stats.uploaded == 3
    assert storage.attempts[1] == 4
    assert storage.attempts[4] == 1
    (completed,) = masks.completions
    assert len(completed) == 3
    assert "upload to group 9 again" in str(error)


def test_progress_counts_each_slice_once_and_ends_at_the_total() -> None:
    masks = FakeMasks()
    storage = FakeStorage(script={0: [transient()], 1: [refused()]})
    reports: list[tuple[int, int]] = []
    uploader(masks, storage, batch_size=3).upload(
        ANNOTATION, GROUP, slices(7), lambda done, total: reports.append((done, total))
    )
    assert reports[0] == (0, 7)
    assert [done for done, _ in reports] == list(range(8))
    assert {total for _, total in reports} == {7}


def test_progress_is_reported_on_the_calling_thread() -> None:
    threads: set[int] = set()
    uploader(FakeMasks(), FakeStorage(), concurrency=4).upload(
        ANNOTATION, GROUP, slices(20), lambda done, total: threads.add(threading.get_ident())
    )
    assert threads == {threading.get_ident()}


def test_concurrency_is_bounded() -> None:
    active = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    class SlowStorage(FakeStorage):
        def upload(self, ticket: mask_pb2.UploadTicket, body: bytes, content_type: str) -> None:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
                if active == 3:
                    release.set()
            release.wait(5)
            with lock:
                active -= 1

    uploader(FakeMasks(), SlowStorage(), concurrency=3).upload(ANNOTATION, GROUP, slices(12))
    assert peak == 3


def test_a_slice_that_changed_since_it_was_measured_is_not_sent(tmp_path: Path) -> None:
    path = tmp_path / "0000.png"
    path.write_bytes(png(4, 4, 0))
    item = Slice(index=0, size=5, md5="0" * 32, width=4, height=4, read=path.read_bytes)
    storage = FakeStorage()
    with pytest.raises(UploadError, match="changed since it was measured"):
        uploader(FakeMasks(), storage).upload(ANNOTATION, GROUP, [item])
    assert storage.attempts[0] == 0


def test_repeated_slice_indexes_are_refused_before_anything_is_sent() -> None:
    masks = FakeMasks()
    with pytest.raises(ValueError, match="distinct"):
        uploader(masks, FakeStorage()).upload(ANNOTATION, GROUP, slices(2) + slices(1))
    assert masks.ticket_calls == []


# -- downloads ------------------------------------------------------------------------------


@dataclass
class FakeGroup:
    images: dict[int, bytes]
    url_calls: list[list[int]] = field(default_factory=list)

    def ListMasks(self, request: mask_pb2.ListMasksRequest) -> mask_pb2.ListMasksResponse:
        masks = [
            mask_pb2.Mask(
                id=100 + index, slice_index=index, mime_type="image/png",
                file_size=len(data), checksum=hashlib.md5(data).hexdigest(),
            )
            for index, data in sorted(self.images.items())
        ]  # fmt: skip
        start = int(request.page_token or 0)
        page = masks[start : start + 2]
        more = start + 2 < len(masks)
        return mask_pb2.ListMasksResponse(
            masks=page, next_page_token=str(start + 2) if more else ""
        )

    def CreateDownloadUrls(
        self, request: mask_pb2.CreateDownloadUrlsRequest
    ) -> mask_pb2.CreateDownloadUrlsResponse:
        ids = list(request.mask_ids) or [100 + i for i in sorted(self.images)]
        self.url_calls.append(list(request.mask_ids))
        round_number = len(self.url_calls)
        return mask_pb2.CreateDownloadUrlsResponse(
            urls=[
                mask_pb2.DownloadUrl(
                    mask_id=i, slice_index=i - 100, url=f"{i - 100}/{round_number}"
                )
                for i in ids
            ]
        )


@dataclass
class FakeFetcher:
    group: FakeGroup
    script: dict[str, list[TransferFailed | bytes]] = field(default_factory=dict)

    def download(self, url: str) -> bytes:
        planned = self.script.get(url, [])
        if planned:
            outcome = planned.pop(0)
            if isinstance(outcome, TransferFailed):
                raise outcome
            return outcome
        return self.group.images[int(url.split("/", maxsplit=1)[0])]


def downloader(group: FakeGroup, fetcher: FakeFetcher) -> MaskDownloader:
    return MaskDownloader(group, fetcher, sleep=lambda _: None, draw=lambda: 0.0)


def test_a_group_is_written_as_numbered_files_with_identical_bytes(tmp_path: Path) -> None:
    group = FakeGroup({i: png(3, 3, i) for i in range(5)})
    reports: list[tuple[int, int]] = []
    result = downloader(group, FakeFetcher(group)).download(
        ANNOTATION, GROUP, tmp_path / "out", lambda d, t: reports.append((d, t))
    )
    assert [p.name for p in result.files] == [f"000{i}.png" for i in range(5)]
    assert all(p.read_bytes() == group.images[i] for i, p in enumerate(result.files))
    assert reports[-1] == (5, 5)
    assert group.url_calls == [[]]
    assert not list((tmp_path / "out").glob(".*"))


def test_expired_urls_are_asked_for_again_for_those_masks_only(tmp_path: Path) -> None:
    group = FakeGroup({i: png(3, 3, i) for i in range(4)})
    fetcher = FakeFetcher(group, script={"2/1": [refused()], "0/1": [transient()]})
    result = downloader(group, fetcher).download(ANNOTATION, GROUP, tmp_path)
    assert len(result.files) == 4
    assert group.url_calls == [[], [102]]


def test_bytes_that_differ_from_the_recorded_md5_are_not_written(tmp_path: Path) -> None:
    group = FakeGroup({0: png(3, 3, 0), 1: png(3, 3, 1)})
    fetcher = FakeFetcher(group, script={"1/1": [b"tampered"] * 4})
    with pytest.raises(DownloadError, match="slice 1: content differs from the recorded MD5"):
        downloader(group, fetcher).download(ANNOTATION, GROUP, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["0000.png"]
