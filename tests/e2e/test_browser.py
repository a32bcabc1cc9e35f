"""The viewer page (clients/typescript) in headless Chromium, against the real stack.

Debian's chromium (/usr/bin/chromium, installed by .ci/run) driven by Playwright, never
a downloaded browser. The page is served by the local stack's viewer server and calls
the server through a real Envoy (gRPC-web) that allows the page's origin; mask images
come straight from SeaweedFS through presigned GET URLs.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import urllib3
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from grpc import aio
from pacs.client import PacsClient, segment
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from pacs_devstack.envoy import EnvoyProcess
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from pacs_devstack.viewer import ViewerServer, ViewerSettings
from pacs_grpc.edge.envoy_config import EnvoyAssets
from tests.support.pacs import store_synthetic_series
from tests.support.png import png
from tests.support.projects import ANNOTATOR, REVIEWER, new_team
from tests.support.users import ApiUser, unique_name

pytestmark = pytest.mark.slow

TS_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "typescript"
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google's hosts,
# which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SLICE_SIZE = 16
SLICE_SEED = 40
LIVE_WITHIN_MS = 1000


@dataclass(frozen=True)
class Seeded:
    page_user: ApiUser  # signs in on the page (annotator)
    writer: ApiUser  # the other client
    reviewer: ApiUser  # approves what the annotators submit
    project_id: int
    project_name: str
    study: str
    annotation_ids: tuple[int, ...]
    masked_annotation_id: int
    group_id: int


def _newest(paths: Iterable[Path]) -> float:
    return max((p.stat().st_mtime for p in paths if p.is_file()), default=0.0)


def _npm(*args: str) -> None:
    npm = shutil.which("npm")
    assert npm is not None, "npm (Node.js 20) is needed to build clients/typescript"
    subprocess.run([npm, *args], cwd=TS_CLIENT, check=True, timeout=900)


@pytest.fixture(scope="module")
def viewer_site() -> Path:
    """The package and the viewer bundle, rebuilt (as `make viewer`) when a source changed.

    A fresh clone always builds, so `make test` proves `npm run build` (tsc) passes.
    """
    installed = TS_CLIENT / "node_modules" / ".package-lock.json"
    manifests = [TS_CLIENT / "package.json", TS_CLIENT / "package-lock.json"]
    if _newest([installed]) < _newest(manifests):
        _npm("ci", "--no-audit", "--no-fund")
    bundle = TS_CLIENT / "dist-viewer" / "viewer.js"
    sources = [*manifests, TS_CLIENT / "tsconfig.json"]
    sources += [p for d in ("src", "viewer") for p in (TS_CLIENT / d).rglob("*")]
    if _newest([bundle]) < _newest(sources):
        _npm("run", "--silent", "build")
    assert (TS_CLIENT / "dist" / "index.d.ts").is_file(), "tsc wrote no declarations"
    return bundle.parent


@pytest.fixture(scope="module")
def viewer(live_stack: LocalStack, viewer_site: Path) -> Iterator[ViewerServer]:
    server = live_stack.start_viewer(site_dir=viewer_site)
    try:
        yield server
    finally:
        live_stack.stop_viewer()


@pytest.fixture(scope="module")
def page_edge(
    live_stack: LocalStack,
    viewer: ViewerServer,
    envoy_assets: EnvoyAssets,
    scratch_dir: Callable[[str], Path],
    artifacts_dir: Path,
) -> Iterator[EnvoyProcess]:
    """Envoy as `make run` configures it: the viewer's origin may call the API."""
    envoy = EnvoyProcess(
        live_stack.edge_settings(cors_allowed_origins=viewer.origins),
        scratch_dir("envoy-viewer"),
        assets=envoy_assets,
        log_path=artifacts_dir / "envoy-viewer.log",
    )
    envoy.start()
    viewer.settings.api_base_url = envoy.url
    try:
        yield envoy
    finally:
        envoy.stop()


@pytest.fixture(scope="module")
async def channel(live_stack: LocalStack) -> AsyncIterator[aio.Channel]:
    assert live_stack.server is not None
    async with aio.insecure_channel(live_stack.server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # launch() gives every browser a fresh, empty profile of its own.
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(
    browser: Browser, artifacts_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Page]:
    """A page whose console errors fail the test, screenshotted at the end whatever happens."""
    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    try:
        yield page
        assert problems == [], "the page reported errors"
    finally:
        await page.screenshot(path=artifacts_dir / f"{request.node.name}.png", full_page=True)
        await context.close()


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update(values)
    return data


async def _create(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub,
    user: ApiUser,
    project_id: int,
    study: str,
    data: dict[str, Any],
) -> int:
    reply = await stub.CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(
            annotation=annotation_pb2.Annotation(
                project_id=project_id,
                study_uid=study,
                annotation_type="point",
                annotation_data=_struct(data),
            )
        ),
        metadata=user.metadata(),
        timeout=10,
    )
    return int(reply.annotation.id)


async def _upload_one_slice(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, user: ApiUser, annotation_id: int
) -> int:
    """A group with one 16x16 PNG slice, uploaded to storage through its POST ticket."""
    group = await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id,
            mask_group=mask_pb2.MaskGroup(group_name="liver", model_name="seg-test", slice_count=1),
        ),
        metadata=user.metadata(),
        timeout=10,
    )
    group_id = group.mask_group.id
    image = png(SLICE_SIZE, SLICE_SIZE, SLICE_SEED)
    tickets = await masks.CreateUploadUrls(
        mask_pb2.CreateUploadUrlsRequest(
            annotation_id=annotation_id,
            group_id=group_id,
            slices=[
                mask_pb2.SliceUpload(slice_index=0, content_type="image/png", size_bytes=len(image))
            ],
        ),
        metadata=user.metadata(),
        timeout=10,
    )
    (ticket,) = tickets.tickets
    fields: dict[str, Any] = {**ticket.fields, "file": ("mask.png", image, "image/png")}
    http = urllib3.PoolManager(retries=False)
    try:
        response = await asyncio.to_thread(http.request, "POST", ticket.url, fields=fields)
    finally:
        http.clear()
    assert response.status in (200, 204), response.status
    await masks.CompleteUpload(
        mask_pb2.CompleteUploadRequest(
            annotation_id=annotation_id,
            group_id=group_id,
            uploads=[
                mask_pb2.CompletedUpload(
                    upload_id=ticket.upload_id, width=SLICE_SIZE, height=SLICE_SIZE
                )
            ],
        ),
        metadata=user.metadata(),
        timeout=10,
    )
    return int(group_id)


@pytest.fixture(scope="module")
async def seeded(live_stack: LocalStack, channel: aio.Channel) -> Seeded:
    """A project the page's user annotates in, with a study of two annotations, one masked."""
    assert live_stack.issuer is not None
    name = unique_name("browser")
    team = await new_team(
        channel,
        live_stack.issuer,
        name,
        {"reader": ANNOTATOR, "writer": ANNOTATOR, "reviewer": REVIEWER},
    )
    page_user, writer, project_id = team["reader"], team["writer"], team.project_id
    annotations = annotation_pb2_grpc.AnnotationServiceStub(channel)
    study = f"1.2.826.0.1.{uuid.uuid4().int % 10**12}"
    first = await _create(annotations, writer, project_id, study, {"x": 1, "label": "lesion"})
    second = await _create(annotations, writer, project_id, study, {"x": 2})
    # Another study of the project: listed for picking, never shown with the first.
    await _create(annotations, writer, project_id, f"{study}.7", {"x": 3})
    group_id = await _upload_one_slice(mask_pb2_grpc.MaskServiceStub(channel), writer, first)
    return Seeded(
        page_user=page_user,
        writer=writer,
        reviewer=team["reviewer"],
        project_id=project_id,
        project_name=name,
        study=study,
        annotation_ids=(first, second),
        masked_annotation_id=first,
        group_id=group_id,
    )


def _item(annotation_id: int) -> str:
    return f'#annotations li[data-annotation-id="{annotation_id}"]'


async def _open_study(page: Page, viewer: ViewerServer, token: str, seeded: Seeded) -> None:
    await page.goto(viewer.url)
    await page.wait_for_selector("body[data-ready=true]")
    await page.fill("#token", token)
    await page.click("#connect")
    await page.wait_for_selector("#browse:not([hidden])")
    await page.select_option("#project", str(seeded.project_id))
    await page.wait_for_selector(f'#study option[value="{seeded.study}"]', state="attached")
    await page.select_option("#study", seeded.study)
    await page.wait_for_selector("#annotations[data-loaded=true]", state="attached")


async def _wait_until_live(
    page: Page, stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, seeded: Seeded
) -> None:
    """The page's watch becomes live a moment after it starts: write anchors until one shows."""
    for attempt in range(20):
        anchor = await _create(stub, seeded.writer, seeded.project_id, seeded.study, {"a": attempt})
        try:
            await page.wait_for_selector(_item(anchor), timeout=2000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError("the page never showed an annotation written by another client")


async def test_the_viewer_lists_watches_shows_a_mask_and_creates(
    page: Page,
    viewer: ViewerServer,
    page_edge: EnvoyProcess,
    seeded: Seeded,
    channel: aio.Channel,
) -> None:
    await _open_study(page, viewer, seeded.page_user.token, seeded)
    # config.json pointed the page at Envoy.
    assert await page.input_value("#api-url") == page_edge.url
    assert seeded.page_user.username in await page.inner_text("#whoami")
    assert seeded.project_name in await page.inner_text("#project")

    # Lists the study's annotations, and only those.
    shown = await page.eval_on_selector_all(
        "#annotations li[data-annotation-id]", "items => items.map(i => i.dataset.annotationId)"
    )
    assert sorted(int(i) for i in shown) == sorted(seeded.annotation_ids)
    assert "lesion" in await page.inner_text(_item(seeded.masked_annotation_id))

    # A change written by another client (Python gRPC) shows within a second.
    stub = annotation_pb2_grpc.AnnotationServiceStub(channel)
    await _wait_until_live(page, stub, seeded)
    started = time.monotonic()
    live_id = await _create(stub, seeded.writer, seeded.project_id, seeded.study, {"live": True})
    left_ms = LIVE_WITHIN_MS - (time.monotonic() - started) * 1000
    await page.wait_for_selector(_item(live_id), timeout=max(left_ms, 1))
    await stub.DeleteAnnotation(
        annotation_pb2.DeleteAnnotationRequest(annotation_id=live_id),
        metadata=seeded.writer.metadata(),
        timeout=10,
    )
    await page.wait_for_selector(_item(live_id), state="detached", timeout=LIVE_WITHIN_MS)

    # A mask slice, loaded from storage by a presigned GET URL with CORS: its pixels are
    # readable, which a canvas refuses for an image storage did not allow.
    await page.click(f"{_item(seeded.masked_annotation_id)} button.open-masks")
    await page.click(f'button.mask-group[data-group-id="{seeded.group_id}"]')
    slice_image = 'img.mask-slice[data-slice-index="0"]'
    await page.wait_for_function(
        f"() => {{ const i = document.querySelector('{slice_image}');"
        " return i !== null && i.complete && i.naturalWidth > 0; }"
    )
    size, pixel = await page.eval_on_selector(
        slice_image,
        """image => {
            const canvas = document.createElement("canvas");
            canvas.width = image.naturalWidth;
            canvas.height = image.naturalHeight;
            const context = canvas.getContext("2d");
            context.drawImage(image, 0, 0);
            return [[image.naturalWidth, image.naturalHeight],
                    context.getImageData(0, 0, 1, 1).data[0]];
        }""",
    )
    assert size == [SLICE_SIZE, SLICE_SIZE]
    assert pixel == SLICE_SEED  # the PNG's first pixel (tests/support/png.py)

    # An annotation created on the page is stored, as the page's user.
    await page.fill("#new-type", "rectangle")
    await page.fill("#new-data", '{"x": 4, "y": 5, "w": 6, "h": 7}')
    await page.click("#create")
    status = page.locator("#status", has_text="created annotation #")
    await status.wait_for()
    created_id = int((await status.inner_text()).rsplit("#", 1)[1])
    await page.wait_for_selector(_item(created_id))
    stored = await stub.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=created_id),
        metadata=seeded.writer.metadata(),
        timeout=10,
    )
    assert stored.annotation.user_id == seeded.page_user.user_id
    assert stored.annotation.study_uid == seeded.study
    assert stored.annotation.annotation_type == "rectangle"
    assert json_format.MessageToDict(stored.annotation.annotation_data) == {
        "x": 4,
        "y": 5,
        "w": 6,
        "h": 7,
    }
    assert stored.annotation.viewer_software.startswith("pacs-viewer-demo/")


def _exported_group(pacs_server: ServerProcess, pacs_url: str, seeded: Seeded) -> Exported:
    """A two-segment group on a synthetic CT in the PACS, submitted by its uploader, approved
    by the project's reviewer (only approved groups are exported) and exported once through
    the linked server, which shares the page's database and storage."""
    series = store_synthetic_series(pacs_url, slices=2, rows=SLICE_SIZE, columns=SLICE_SIZE)
    volume = np.zeros((2, SLICE_SIZE, SLICE_SIZE), dtype=np.uint8)
    volume[:, 2:10, 2:10] = 1
    volume[:, 11:14, 11:14] = 2
    with PacsClient(pacs_server.address, seeded.writer.token, insecure=True, timeout=60) as client:
        annotation = client.create_annotation(
            project_id=seeded.project_id, study_uid=series.study_uid,
            series_uid=series.series_uid, annotation_type="segmentation", data={},
        )  # fmt: skip
        group = client.upload_mask_group(
            annotation.id, segments=[segment(1, "Liver"), segment(2, "Lesion")],
            label_maps=volume, group_name="exported", model_name="seg-test",
        ).group  # fmt: skip
        client.masks.SubmitMaskGroupForReview(
            mask_pb2.SubmitMaskGroupForReviewRequest(annotation_id=annotation.id, group_id=group.id)
        )
        with PacsClient(
            pacs_server.address, seeded.reviewer.token, insecure=True, timeout=60
        ) as reviewer:
            reviewer.masks.ApproveMaskGroup(
                mask_pb2.ApproveMaskGroupRequest(annotation_id=annotation.id, group_id=group.id)
            )
        export = client.export_mask_group(annotation.id, group.id).export
    return Exported(series.study_uid, annotation.id, group.id, export.id, export.size_bytes)


@dataclass(frozen=True)
class Exported:
    study: str
    annotation_id: int
    group_id: int
    export_id: int
    size: int


async def test_the_viewer_lists_a_groups_seg_exports_with_download_links(
    page: Page,
    viewer: ViewerServer,
    page_edge: EnvoyProcess,
    seeded: Seeded,
    pacs_server: ServerProcess,
    pacs_url: str,
) -> None:
    exported = await asyncio.to_thread(_exported_group, pacs_server, pacs_url, seeded)
    await _open_study(page, viewer, seeded.page_user.token, replace(seeded, study=exported.study))
    await page.click(f"{_item(exported.annotation_id)} button.open-masks")
    group_row = f'li.mask-group-item[data-group-id="{exported.group_id}"]'
    await page.wait_for_selector(f'{group_row}[data-review-state="approved"] .badge.frozen')
    await page.click(f'button.mask-group[data-group-id="{exported.group_id}"]')
    row = f'#export-list li.mask-export[data-export-id="{exported.export_id}"]'
    await page.wait_for_selector(row)
    assert "2 segment(s)" in await page.inner_text(row)
    assert "not sent to the PACS" in await page.inner_text(row)
    # The link is a presigned GET of the .dcm: following it downloads the SEG file.
    link = page.locator(f"{row} a.export-download")
    assert await link.get_attribute("download") == (
        f"seg-group{exported.group_id}-export{exported.export_id}.dcm"
    )
    async with page.expect_download() as started:
        await link.click()
    download = await started.value
    data = await asyncio.to_thread(Path(await download.path()).read_bytes)
    assert len(data) == exported.size
    assert data[128:132] == b"DICM"
    # The masked group of the other study has no exports, and says so.
    await _open_study(page, viewer, seeded.page_user.token, seeded)
    await page.click(f"{_item(seeded.masked_annotation_id)} button.open-masks")
    await page.click(f'button.mask-group[data-group-id="{seeded.group_id}"]')
    await page.wait_for_selector("#export-list li.no-exports")


async def _sign_in_to_study(page: Page, viewer: ViewerServer, user: ApiUser, at: Seeded) -> None:
    """`user` on the page, with `at.study` open and the project's review queue listed."""
    await _open_study(page, viewer, user.token, at)
    await page.wait_for_selector("#queue[data-loaded=true]", state="attached")


async def _status_after(page: Page, click: str, expected: str) -> str:
    """The status line once it says `expected` after clicking `click`."""
    await page.click(click)
    status = page.locator("#status", has_text=expected)
    await status.wait_for()
    return await status.inner_text()


async def test_the_viewer_restores_a_revision_and_takes_an_annotation_through_review(
    page: Page,
    viewer: ViewerServer,
    page_edge: EnvoyProcess,
    seeded: Seeded,
    channel: aio.Channel,
) -> None:
    annotator, reviewer = seeded.page_user, seeded.reviewer
    at = replace(seeded, study=f"{seeded.study}.9")
    stub = annotation_pb2_grpc.AnnotationServiceStub(channel)
    annotation_id = await _create(
        stub, annotator, seeded.project_id, at.study, {"x": 1, "label": "first"}
    )
    await stub.UpdateAnnotation(
        annotation_pb2.UpdateAnnotationRequest(
            annotation_id=annotation_id,
            annotation=annotation_pb2.Annotation(annotation_data=_struct({"x": 2})),
            update_mask=field_mask_pb2.FieldMask(paths=["annotation_data"]),
        ),
        metadata=annotator.metadata(),
        timeout=10,
    )
    group_id = await _upload_one_slice(
        mask_pb2_grpc.MaskServiceStub(channel), annotator, annotation_id
    )
    item = _item(annotation_id)

    await _sign_in_to_study(page, viewer, annotator, at)
    await page.wait_for_selector(f'{item}[data-revision="2"][data-review-state="draft"]')
    # History lists both revisions, newest first; restoring the first writes it back as a third.
    await page.click(f"{item} button.show-history")
    await page.wait_for_selector(f'{item} li.revision[data-revision="1"][data-action="created"]')
    listed = await page.eval_on_selector_all(
        f"{item} li.revision", "rows => rows.map(r => r.dataset.revision)"
    )
    assert listed == ["2", "1"]
    assert await page.locator(f'{item} li.revision[data-revision="2"] button').count() == 0
    await page.click(f'{item} li.revision[data-revision="1"] button.restore-revision')
    await page.wait_for_selector(f'{item}[data-revision="3"]')
    assert "first" in await page.inner_text(f"{item} .annotation-data")
    restored = f'{item} li.revision[data-revision="3"][data-action="restored"]'
    await page.wait_for_selector(restored)
    assert "from r1" in await page.inner_text(restored)
    assert "annotation_data" in await page.inner_text(restored)

    submitted = await _status_after(page, f"{item} button.submit-review", "submitted for review")
    assert submitted == f"annotation #{annotation_id} submitted for review"
    await page.wait_for_selector(f'{item}[data-review-state="submitted"]')
    # Annotators do not approve, least of all their own work: the server says no, the page says why.
    refusal = await _status_after(page, f"{item} button.approve", "PermissionDenied")
    assert await page.get_attribute("#status", "class") == "error", refusal
    # The group goes to review from the mask view.
    await page.click(f"{item} button.open-masks")
    group_row = f'li.mask-group-item[data-group-id="{group_id}"]'
    await _status_after(page, f"{group_row} button.submit-review", "submitted for review")
    await page.wait_for_selector(f'{group_row}[data-review-state="submitted"]')

    # The reviewer finds both in review, rejects the group with a reason and approves the
    # annotation from the project's queue.
    await _sign_in_to_study(page, viewer, reviewer, at)
    queued = f'#queue li.queued[data-annotation-id="{annotation_id}"]'
    await page.wait_for_selector(queued)
    await page.click(f"{item} button.open-masks")
    await page.fill(f"{group_row} input.reject-comment", "the liver edge is off by a slice")
    await _status_after(page, f"{group_row} button.reject", "rejected")
    rejected = f'{group_row}[data-review-state="rejected"]'
    await page.wait_for_selector(rejected)
    assert "the liver edge is off by a slice" in await page.inner_text(rejected)
    await _status_after(page, f"{queued} button.approve", "approved")
    await page.wait_for_selector(queued, state="detached")
    await page.wait_for_selector(f'{item}[data-review-state="approved"] .badge.frozen')

    # Approved is frozen: the annotator's restore is refused, and the page says so.
    await _sign_in_to_study(page, viewer, annotator, at)
    await page.wait_for_selector(f'{item}[data-review-state="approved"] .badge.frozen')
    await page.click(f"{item} button.show-history")
    await page.wait_for_selector(f'{item} li.revision[data-revision="5"][data-action="approved"]')
    frozen = await _status_after(
        page, f'{item} li.revision[data-revision="1"] button.restore-revision', "FailedPrecondition"
    )
    assert "frozen" in frozen
    assert await page.get_attribute("#status", "class") == "error"
    stored = await stub.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=annotation_id),
        metadata=annotator.metadata(),
        timeout=10,
    )
    assert stored.annotation.revision == 5
    assert json_format.MessageToDict(stored.annotation.annotation_data) == {
        "x": 1,
        "label": "first",
    }


async def test_a_dev_token_from_the_local_stack_signs_in(
    page: Page, viewer: ViewerServer, page_edge: EnvoyProcess
) -> None:
    name = f"dev-{uuid.uuid4().hex[:8]}"
    await page.goto(viewer.url)
    await page.wait_for_selector("#dev-token:not([hidden])")
    await page.fill("#dev-user", name)
    await page.click("#fetch-token")
    await page.wait_for_function("() => document.querySelector('#token').value.length > 100")
    await page.click("#connect")
    await page.wait_for_selector("#browse:not([hidden])")
    assert name in await page.inner_text("#whoami")


def test_the_dev_token_endpoint_answers_only_its_own_page(viewer: ViewerServer) -> None:
    http = urllib3.PoolManager(retries=False)
    url = f"{viewer.origin}/dev-token"
    body = b'{"username": "mallory", "admin": true}'
    headers = {"Content-Type": "application/json"}
    try:
        # Another site's script: its Origin gives it away.
        foreign = http.request(
            "POST", url, body=body, headers={**headers, "Origin": "http://evil.example"}
        )
        # A rebound DNS name reaching loopback: its Host gives it away.
        rebound = http.request(
            "POST",
            url,
            body=body,
            headers={**headers, "Origin": viewer.origin, "Host": "evil.example"},
        )
        own = http.request("POST", url, body=body, headers={**headers, "Origin": viewer.origin})
    finally:
        http.clear()
    assert foreign.status == 403
    assert rebound.status == 421
    assert own.status == 200
    assert own.json()["token"].count(".") == 2


def test_an_unbuilt_viewer_says_how_to_build_it(tmp_path: Path) -> None:
    server = ViewerServer(ViewerSettings(site_dir=tmp_path / "dist-viewer"))
    server.start()
    http = urllib3.PoolManager(retries=False)
    try:
        page = http.request("GET", server.url)
        config = http.request("GET", f"{server.origin}/config.json")
    finally:
        http.clear()
        server.stop()
    assert page.status == 503
    assert b"make viewer" in page.data
    # Without a dev issuer the page offers no token fetching.
    assert config.json() == {"apiBaseUrl": ""}
