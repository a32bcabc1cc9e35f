"""Downloading a mask group's slices into a folder, checked against their recorded MD5.

Files are named by slice index (`0007.png`), the names `from_directory` reads back, and written
under a temporary name first, so a folder never holds half a slice.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pacs.client.paging import PAGE_SIZE, all_items
from pacs.client.transfer import TransferFailed
from pacs.client.uploads import MAX_SLICES_PER_CALL, ProgressCallback
from pacs.v1 import mask_pb2

_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "application/octet-stream": ".bin"}
_HEX_MD5 = re.compile(r"^[0-9a-f]{32}$")


class DownloadCalls(Protocol):
    @property
    def ListMasks(  # noqa: N802 - the RPC's name
        self,
    ) -> Callable[[mask_pb2.ListMasksRequest], mask_pb2.ListMasksResponse]: ...

    @property
    def CreateDownloadUrls(  # noqa: N802 - the RPC's name
        self,
    ) -> Callable[[mask_pb2.CreateDownloadUrlsRequest], mask_pb2.CreateDownloadUrlsResponse]: ...


class Fetcher(Protocol):
    def download(self, url: str) -> bytes: ...


@dataclass(frozen=True)
class DownloadResult:
    files: list[Path]
    bytes_received: int


class DownloadError(Exception):
    """Some slices could not be downloaded; the others are in the folder."""

    def __init__(self, failed: dict[int, str], written: int) -> None:
        self.failed = dict(sorted(failed.items()))
        shown = "; ".join(f"slice {i}: {reason}" for i, reason in list(self.failed.items())[:5])
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(
            f"{len(failed)} slice(s) not downloaded ({shown}{more}); {written} written"
        )


def masks_of_group(
    calls: DownloadCalls, annotation_id: int, group_id: int
) -> Iterator[mask_pb2.Mask]:
    return all_items(
        lambda token: calls.ListMasks(
            mask_pb2.ListMasksRequest(
                annotation_id=annotation_id, group_id=group_id, page_size=PAGE_SIZE,
                page_token=token,
            )
        ),
        lambda reply: reply.masks,
    )  # fmt: skip


def file_name(mask: mask_pb2.Mask, width: int = 4) -> str:
    return f"{mask.slice_index:0{width}d}{_EXTENSIONS.get(mask.mime_type, '.bin')}"


class MaskDownloader:
    def __init__(
        self,
        calls: DownloadCalls,
        fetcher: Fetcher,
        *,
        concurrency: int = 8,
        attempts: int = 4,
        url_rounds: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._calls = calls
        self._fetcher = fetcher
        self._concurrency = concurrency
        self._attempts = attempts
        self._url_rounds = url_rounds
        self._sleep = sleep
        self._draw = draw

    def download(
        self,
        annotation_id: int,
        group_id: int,
        directory: Path,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        masks = {m.id: m for m in masks_of_group(self._calls, annotation_id, group_id)}
        directory.mkdir(parents=True, exist_ok=True)
        width = max(4, len(str(max((m.slice_index for m in masks.values()), default=0))))
        total = len(masks)
        written: list[Path] = []
        received = 0
        failed: dict[int, str] = {}
        if progress is not None:
            progress(0, total)
        pending = sorted(masks)
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="pacs-download") as pool:
            for _ in range(self._url_rounds):
                if not pending:
                    break
                urls = self._urls(
                    annotation_id, group_id, pending, whole_group=len(pending) == total
                )
                futures = {
                    pool.submit(self._fetch, url.url, masks[url.mask_id], directory, width): url
                    for url in urls
                    if url.mask_id in masks
                }
                refused: list[int] = []
                for future in as_completed(futures):
                    mask = masks[futures[future].mask_id]
                    outcome = future.result()
                    if isinstance(outcome, Path):
                        written.append(outcome)
                        received += mask.file_size
                        if progress is not None:
                            progress(len(written), total)
                    elif outcome.refused:
                        refused.append(mask.id)
                    else:
                        failed[mask.slice_index] = outcome.reason
                pending = sorted(refused)
        for mask_id in pending:
            failed[masks[mask_id].slice_index] = "storage refused every URL (HTTP 403)"
        if failed:
            raise DownloadError(failed, len(written))
        return DownloadResult(files=sorted(written), bytes_received=received)

    def _urls(
        self, annotation_id: int, group_id: int, mask_ids: Sequence[int], *, whole_group: bool
    ) -> list[mask_pb2.DownloadUrl]:
        if whole_group:
            # The server answers a whole group a page at a time (at most its
            # MAX_SLICES_PER_REQUEST URLs per reply).
            return list(
                all_items(
                    lambda token: self._calls.CreateDownloadUrls(
                        mask_pb2.CreateDownloadUrlsRequest(
                            annotation_id=annotation_id, group_id=group_id, page_token=token
                        )
                    ),
                    lambda reply: reply.urls,
                )
            )
        chunks = [
            mask_ids[i : i + MAX_SLICES_PER_CALL]
            for i in range(0, len(mask_ids), MAX_SLICES_PER_CALL)
        ]
        urls: list[mask_pb2.DownloadUrl] = []
        for chunk in chunks:
            reply = self._calls.CreateDownloadUrls(
                mask_pb2.CreateDownloadUrlsRequest(
                    annotation_id=annotation_id, group_id=group_id, mask_ids=chunk
                )
            )
            urls.extend(reply.urls)
        return urls

    def _fetch(
        self, url: str, mask: mask_pb2.Mask, directory: Path, width: int
    ) -> Path | TransferFailed:
        for attempt in range(1, self._attempts + 1):
            try:
                data = self._fetcher.download(url)
            except TransferFailed as failure:
                if failure.refused or not failure.transient or attempt == self._attempts:
                    return failure
                self._sleep(self._draw() * min(5.0, 0.2 * 2 ** (attempt - 1)))
                continue
            checksum = mask.checksum.lower()
            if _HEX_MD5.match(checksum) and hashlib.md5(data).hexdigest() != checksum:  # noqa: S324
                if attempt == self._attempts:
                    return TransferFailed("content differs from the recorded MD5")
                continue
            return _write(directory / file_name(mask, width), data)
        raise AssertionError("unreachable")  # pragma: no cover


def _write(path: Path, data: bytes) -> Path:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
