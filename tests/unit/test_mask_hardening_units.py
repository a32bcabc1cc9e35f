"""Issue 12's mask items as pure logic: settings, the download-URL rate limit, the PushMasks
memory budget, the PNG check's version, and the Python client paging through download URLs.
The same behaviour on the real stack: tests/integration/test_mask_hardening.py."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from pacs.client.downloads import MaskDownloader
from pacs.v1 import mask_pb2

from pacs_grpc.adapters.clock import SystemClock
from pacs_grpc.api.rate_limits import CallLimits
from pacs_grpc.config import ConfigError, Settings
from pacs_grpc.domain.errors import NotFound, ResourceExhausted
from pacs_grpc.domain.masks import CompletedSlice, MaskLimits, PendingUpload
from pacs_grpc.domain.objects import ObjectInfo
from pacs_grpc.domain.pacs import PacsValidation
from pacs_grpc.services.mask_completion import UploadCompletion
from pacs_grpc.services.pacs_checks import PacsChecks
from pacs_grpc.services.push_memory import PushMemoryBudget

VALID = {
    "DATABASE_URL": "postgresql://app:db-password@db.internal:5432/pacs",
    "S3_ENDPOINT": "https://minio.internal:9000",
    "S3_ACCESS_KEY": "access",
    "S3_SECRET_KEY": "s3-secret-value",
    "OIDC_ISSUER": "https://keycloak.internal/realms/pacs",
    "OIDC_AUDIENCE": "pacs-api",
    "OIDC_JWKS_URL": "https://keycloak.internal/realms/pacs/protocol/openid-connect/certs",
}
MIB = 1024 * 1024
PNG_HEAD = b"\x89PNG\r\n\x1a\n"


# -- settings ---------------------------------------------------------------------------------


def test_put_tickets_are_off_and_budgets_bounded_by_default() -> None:
    settings = Settings.from_env(VALID)
    assert settings.allow_put_uploads is False
    assert settings.push_memory_budget_bytes == 256 * MIB
    assert settings.push_memory_budget_per_user_bytes == 128 * MIB
    assert settings.rate_limits.downloads_per_minute == 300


def test_mask_hardening_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            **VALID,
            "ALLOW_PUT_UPLOADS": "true",
            "PUSH_MEMORY_BUDGET_BYTES": str(64 * MIB),
            "PUSH_MEMORY_BUDGET_PER_USER_BYTES": str(32 * MIB),
            "RATE_LIMIT_DOWNLOADS_PER_MINUTE": "0",
        }
    )
    assert settings.allow_put_uploads is True
    assert settings.push_memory_budget_bytes == 64 * MIB
    assert settings.push_memory_budget_per_user_bytes == 32 * MIB
    assert settings.rate_limits.downloads_per_minute == 0


@pytest.mark.parametrize(
    "variable", ["PUSH_MEMORY_BUDGET_BYTES", "PUSH_MEMORY_BUDGET_PER_USER_BYTES"]
)
def test_a_budget_smaller_than_a_slice_is_refused(variable: str) -> None:
    # One slice holds up to 12 MiB: a smaller budget would refuse every large slice.
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({**VALID, variable: str(MIB)})


# -- download URL rate limit ------------------------------------------------------------------


def test_download_url_calls_are_limited_per_user() -> None:
    now = [0.0]
    refused: list[str] = []
    limits = CallLimits(
        tickets_per_minute=0, completions_per_minute=0, pushes_per_minute=0,
        watches_per_minute=0, max_streams_per_user=0, downloads_per_minute=2,
        clock=lambda: now[0], on_refused=refused.append,
    )  # fmt: skip
    method = "/pacs.v1.MaskService/CreateDownloadUrls"
    limits.admit(method, "a")
    limits.admit(method, "a")
    with pytest.raises(ResourceExhausted) as raised:
        limits.admit(method, "a")
    assert raised.value.retry_after_seconds == pytest.approx(30.0)
    assert refused == ["downloads"]
    limits.admit(method, "b")  # another user
    now[0] += 30.0
    limits.admit(method, "a")


# -- PushMasks memory budget ------------------------------------------------------------------


def test_the_budget_bounds_each_user_and_the_process() -> None:
    budget = PushMemoryBudget(per_process=30, per_user=20)
    assert budget.try_reserve("a", 12)
    assert not budget.try_reserve("a", 12)  # 24 > the user's 20
    assert budget.try_reserve("b", 12)
    assert not budget.try_reserve("c", 12)  # 36 > the process's 30
    assert budget.try_reserve("c", 6)
    assert budget.in_use == 30
    budget.release("a", 12)
    assert budget.used_by("a") == 0
    assert budget.try_reserve("c", 12)
    assert budget.used_by("c") == 18


# -- PNG check of the checked version ---------------------------------------------------------


@dataclass
class OverwrittenStorage:
    """An object checked as version v1 (a PNG) and overwritten since by v2 (not a PNG)."""

    reads: list[str | None] = field(default_factory=list)

    async def stat(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, 16, "0" * 32, "image/png", version_id="v1")

    async def read_head(self, key: str, length: int, *, version_id: str | None = None) -> bytes:
        self.reads.append(version_id)
        if version_id is None:
            return b"GIF89a.."[:length]  # the latest version
        if version_id != "v1":
            raise NotFound("no such version")
        return PNG_HEAD[:length]


def _use_cases(storage: object) -> UploadCompletion[Any]:
    limits = MaskLimits(
        max_slices_per_call=10, max_mask_bytes=MIB, allowed_content_types=frozenset({"image/png"}),
        upload_ttl=timedelta(minutes=5), download_ttl=timedelta(minutes=5),
        max_ttl=timedelta(hours=1), max_page_size=50, check_png_signature=True,
        allow_put_uploads=False, push_memory_per_process=256 * MIB, push_memory_per_user=128 * MIB,
    )  # fmt: skip
    unused = cast(Any, None)
    return UploadCompletion(
        unused, masks=unused, storage=cast(Any, storage), database=unused, limits=limits,
        pacs_checks=PacsChecks(None, PacsValidation.OFF), clock=SystemClock(),
    )  # fmt: skip


async def test_the_png_check_reads_the_version_it_records() -> None:
    storage = OverwrittenStorage()
    upload_id = uuid.uuid4()
    upload = PendingUpload(
        upload_id, 1, 0, None, None, "image/png", 16, None, "PUT", "masks/k",
        datetime.now(UTC) + timedelta(minutes=5), None,
    )  # fmt: skip
    new, problem = await _use_cases(storage)._check(
        upload, CompletedSlice(upload_id, 8, 8, None), {}
    )
    assert problem is None
    assert storage.reads == ["v1"]
    assert new is not None
    assert new.object_version == "v1"


# -- the Python client pages through a group's download URLs ----------------------------------


@dataclass
class PagedGroup:
    """A server that answers a whole group two URLs at a time, as MAX_SLICES_PER_REQUEST=2."""

    images: dict[int, bytes]
    tokens: list[str] = field(default_factory=list)

    def _mask(self, index: int) -> mask_pb2.Mask:
        data = self.images[index]
        return mask_pb2.Mask(
            id=100 + index, slice_index=index, mime_type="image/png", file_size=len(data),
            checksum=hashlib.md5(data).hexdigest(),
        )  # fmt: skip

    def ListMasks(self, request: mask_pb2.ListMasksRequest) -> mask_pb2.ListMasksResponse:
        return mask_pb2.ListMasksResponse(masks=[self._mask(i) for i in sorted(self.images)])

    def CreateDownloadUrls(
        self, request: mask_pb2.CreateDownloadUrlsRequest
    ) -> mask_pb2.CreateDownloadUrlsResponse:
        assert not request.mask_ids
        self.tokens.append(request.page_token)
        start = int(request.page_token or 0)
        indexes = sorted(self.images)[start : start + 2]
        more = start + 2 < len(self.images)
        return mask_pb2.CreateDownloadUrlsResponse(
            urls=[
                mask_pb2.DownloadUrl(mask_id=100 + i, slice_index=i, url=str(i)) for i in indexes
            ],
            next_page_token=str(start + 2) if more else "",
        )


@dataclass
class Fetcher:
    group: PagedGroup

    def download(self, url: str) -> bytes:
        return self.group.images[int(url)]


def test_pulling_a_group_pages_through_every_download_url(tmp_path: Path) -> None:
    group = PagedGroup({i: bytes([i]) * 10 for i in range(5)})
    result = MaskDownloader(group, Fetcher(group), sleep=lambda _: None).download(1, 2, tmp_path)
    assert [p.name for p in result.files] == [f"000{i}.png" for i in range(5)]
    assert group.tokens == ["", "2", "4"]
