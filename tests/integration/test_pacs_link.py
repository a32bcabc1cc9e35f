"""The PACS link end to end: servers checking writes against a real Orthanc (issue 13, items
1 and 2), the DICOMweb adapter against it, and what a PACS that goes away does.

Each server here runs on the session stack's PostgreSQL and storage: the session's own
server (PACS_VALIDATE off) writes what the linked ones would refuse, so refusals can be
tried on rows that exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import urllib3
from google.protobuf import struct_pb2
from grpc import aio
from grpc_health.v1 import health_pb2
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)
from pydicom import Dataset

from pacs_devstack.ports import free_port
from pacs_devstack.sample_ct import store_series, synthetic_ct
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from pacs_grpc.adapters.pacs.dicomweb import DicomWebPacs
from pacs_grpc.config import PacsSettings
from pacs_grpc.domain.pacs import along_normal
from tests.support.pacs import StoredSeries, store_synthetic_series
from tests.support.png import png
from tests.support.projects import ANNOTATOR, new_team
from tests.support.stacks import ServerStarter
from tests.support.tcp_proxy import TcpProxy
from tests.support.users import ApiUser, unique_name

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POST = mask_pb2.UPLOAD_METHOD_POST
ROWS, COLUMNS = 32, 24
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(10))


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class Linked:
    """A server checking writes against the PACS, and what it is watched through."""

    server: ServerProcess
    metrics_port: int
    log_path: Path

    def metric(self, name: str, **labels: str) -> float:
        text = _http.request("GET", f"http://127.0.0.1:{self.metrics_port}/metrics").data
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$"
        found = re.search(pattern, text.decode(), re.MULTILINE)
        return float(found.group(1)) if found else 0.0


@dataclass
class People:
    admin: ApiUser
    writer: ApiUser
    project_id: int


@pytest.fixture(scope="module")
def servers(live_stack: LocalStack, artifacts_dir: Path) -> Iterator[ServerStarter]:
    starter = ServerStarter(live_stack, artifacts_dir, "pacs-link")
    try:
        yield starter
    finally:
        starter.stop_all()


def _linked(servers: ServerStarter, artifacts_dir: Path, url: str, **env: str) -> Linked:
    metrics_port = free_port()
    server = servers.start_linked(
        url,
        {"METRICS_PORT": str(metrics_port), "METRICS_HOST": "127.0.0.1",
         "HEALTH_PROBE_INTERVAL_SECONDS": "0.3", "PACS_PROBE_INTERVAL_SECONDS": "0.3", **env},
    )  # fmt: skip
    return Linked(server, metrics_port, artifacts_dir / f"pacs-link-{server.port}.log")


@pytest.fixture(scope="module")
def enforcing(servers: ServerStarter, artifacts_dir: Path, pacs_url: str) -> Linked:
    return _linked(servers, artifacts_dir, pacs_url)


@pytest.fixture(scope="module")
async def enforcing_channel(enforcing: Linked) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(enforcing.server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
async def people(live_stack: LocalStack, channel: aio.Channel) -> People:
    assert live_stack.issuer is not None
    team = await new_team(channel, live_stack.issuer, unique_name("pacs"), {"pipeline": ANNOTATOR})
    return People(team.admin, team["pipeline"], team.project_id)


@pytest.fixture(scope="module")
def ct(pacs_url: str) -> StoredSeries:
    """A small series whose InstanceNumbers run against the slice normal, stored out of
    order: only binding by position along the normal gets the slices right."""
    datasets = synthetic_ct(slices=6, rows=ROWS, columns=COLUMNS)
    for number, ds in zip(range(6, 0, -1), datasets, strict=True):
        ds.InstanceNumber = number
    store_series(pacs_url, [datasets[i] for i in (3, 0, 5, 1, 4, 2)])
    first = datasets[0]
    return StoredSeries(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), datasets)


async def _create(
    channel: aio.Channel, people: People, study: str, series: str = "", instance: str = ""
) -> annotation_pb2.Annotation:
    data = struct_pb2.Struct()
    data.update({"kind": "roi"})
    reply = await annotation_pb2_grpc.AnnotationServiceStub(channel).CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(
            annotation=annotation_pb2.Annotation(
                project_id=people.project_id, study_uid=study, series_uid=series,
                instance_uid=instance, annotation_type="segmentation", annotation_data=data,
            )
        ),
        metadata=people.writer.metadata(),
        timeout=20,
    )  # fmt: skip
    return reply.annotation


def _health_becomes(server: ServerProcess, service: str, status: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.health(service) == status:
            return True
        time.sleep(0.1)
    return False


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


def _count(live_stack: LocalStack, sql: str, value: object) -> int:
    with psycopg.connect(live_stack.database_url) as conn:
        row = conn.execute(sql, [value]).fetchone()
    assert row is not None
    return int(row[0])


# -- item 1: writes checked against the PACS ---------------------------------------------


async def test_a_study_the_pacs_lacks_is_refused_naming_the_field_and_nothing_is_written(
    live_stack: LocalStack, enforcing: Linked, enforcing_channel: aio.Channel, people: People
) -> None:
    study = _uid()
    error = await _refused(_create(enforcing_channel, people, study))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "annotation.study_uid: not found in the PACS"
    count = "select count(*) from annotation_annotation where study_uid = %s"
    assert _count(live_stack, count, study) == 0
    # Neither the server's log nor its metrics learn the UID.
    assert study not in enforcing.log_path.read_text()
    body = _http.request("GET", f"http://127.0.0.1:{enforcing.metrics_port}/metrics").data
    assert study.encode() not in body


async def test_series_and_instance_are_checked_when_given(
    enforcing_channel: aio.Channel, people: People, ct: StoredSeries
) -> None:
    for series, instance, field in (
        (_uid(), "", "series_uid"),
        (ct.series_uid, _uid(), "instance_uid"),
    ):
        error = await _refused(_create(enforcing_channel, people, ct.study_uid, series, instance))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == f"annotation.{field}: not found in the PACS"
    created = await _create(
        enforcing_channel, people, ct.study_uid, ct.series_uid, ct.sop_instance_uids[2]
    )
    assert created.id > 0


async def test_a_known_study_is_asked_for_once_then_answered_from_the_cache(
    enforcing: Linked, enforcing_channel: aio.Channel, people: People, pacs_url: str
) -> None:
    stored = store_synthetic_series(pacs_url, slices=1, rows=8, columns=8)
    before = enforcing.metric("pacs_pacs_requests_total", operation="qido", outcome="ok")
    await _create(enforcing_channel, people, stored.study_uid, stored.series_uid)
    after_first = enforcing.metric("pacs_pacs_requests_total", operation="qido", outcome="ok")
    assert after_first == before + 1
    for _ in range(3):
        await _create(enforcing_channel, people, stored.study_uid, stored.series_uid)
    # The study alone is known too: a series found proves its study.
    await _create(enforcing_channel, people, stored.study_uid)
    assert enforcing.metric("pacs_pacs_requests_total", operation="qido", outcome="ok") == (
        after_first
    )


async def test_a_mask_group_on_an_annotation_whose_series_the_pacs_lacks_is_refused(
    live_stack: LocalStack,
    channel: aio.Channel,
    enforcing_channel: aio.Channel,
    people: People,
    ct: StoredSeries,
) -> None:
    # Written through the session's unlinked server, as before the PACS link existed.
    orphan = await _create(channel, people, ct.study_uid, _uid())
    error = await _refused(
        mask_pb2_grpc.MaskServiceStub(enforcing_channel).CreateMaskGroup(
            mask_pb2.CreateMaskGroupRequest(
                annotation_id=orphan.id, mask_group=mask_pb2.MaskGroup(slice_count=2)
            ),
            metadata=people.writer.metadata(),
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (error.details() or "").startswith("annotation.series_uid: not found in the PACS")
    count = "select count(*) from annotation_mask_group where annotation_id = %s"
    assert _count(live_stack, count, orphan.id) == 0


# -- item 2: slices bound to their source instances --------------------------------------


async def _group(channel: aio.Channel, people: People, annotation_id: int, count: int) -> int:
    reply = await mask_pb2_grpc.MaskServiceStub(channel).CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id, mask_group=mask_pb2.MaskGroup(slice_count=count)
        ),
        metadata=people.writer.metadata(),
    )
    return reply.mask_group.id


async def _tickets_uploaded(
    channel: aio.Channel, people: People, annotation_id: int, group_id: int,
    sop_uids: list[str], images: list[bytes],
) -> list[mask_pb2.UploadTicket]:  # fmt: skip
    tickets = (
        await mask_pb2_grpc.MaskServiceStub(channel).CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=annotation_id,
                group_id=group_id,
                slices=[
                    mask_pb2.SliceUpload(
                        slice_index=index, sop_instance_uid=sop, content_type="image/png",
                        size_bytes=len(image), md5=hashlib.md5(image).hexdigest(),
                    )
                    for index, (sop, image) in enumerate(zip(sop_uids, images, strict=True))
                ],
                method=POST,
            ),
            metadata=people.writer.metadata(),
        )
    ).tickets  # fmt: skip
    for ticket in tickets:
        fields: dict[str, Any] = dict(ticket.fields)
        fields["file"] = ("mask.png", images[ticket.slice_index], "image/png")
        response = await asyncio.to_thread(_http.request, "POST", ticket.url, fields=fields)
        assert response.status == 204
    return list(tickets)


def _expected_order(datasets: list[Dataset]) -> list[str]:
    """The series' SOP Instance UIDs along the normal, computed here from the datasets."""
    row, column = datasets[0].ImageOrientationPatient[:3], datasets[0].ImageOrientationPatient[3:]
    normal = (
        row[1] * column[2] - row[2] * column[1],
        row[2] * column[0] - row[0] * column[2],
        row[0] * column[1] - row[1] * column[0],
    )
    distance = {
        str(ds.SOPInstanceUID): sum(
            float(p) * n for p, n in zip(ds.ImagePositionPatient, normal, strict=True)
        )
        for ds in datasets
    }
    return sorted(distance, key=distance.__getitem__)


async def test_completion_binds_slices_without_uid_by_position_along_the_normal(
    enforcing_channel: aio.Channel, people: People, ct: StoredSeries, pacs_url: str
) -> None:
    annotation = await _create(enforcing_channel, people, ct.study_uid, ct.series_uid)
    group_id = await _group(enforcing_channel, people, annotation.id, 6)
    images = [png(COLUMNS, ROWS, seed) for seed in range(6)]
    # Slice 1 names its image; the others leave it to the server.
    sop_uids = ["", _expected_order(ct.datasets)[1], "", "", "", ""]
    tickets = await _tickets_uploaded(
        enforcing_channel, people, annotation.id, group_id, sop_uids, images
    )
    done = await mask_pb2_grpc.MaskServiceStub(enforcing_channel).CompleteUpload(
        mask_pb2.CompleteUploadRequest(
            annotation_id=annotation.id, group_id=group_id,
            uploads=[
                mask_pb2.CompletedUpload(upload_id=t.upload_id, width=COLUMNS, height=ROWS)
                for t in tickets
            ],
        ),
        metadata=people.writer.metadata(),
    )  # fmt: skip
    assert done.mask_group.status == mask_pb2.MASK_GROUP_STATUS_COMPLETE
    stored = {m.slice_index: m.sop_instance_uid for m in done.masks}
    assert [stored[i] for i in range(6)] == _expected_order(ct.datasets)
    # By InstanceNumber, which runs the other way, slice 0 would have been the last image.
    assert stored[0] != ct.datasets[-1].SOPInstanceUID
    # What the server binds with agrees with the test's own geometry.
    pacs = DicomWebPacs(PacsSettings(dicomweb_url=pacs_url))
    try:
        series = await pacs.source_series(ct.study_uid, ct.series_uid)
    finally:
        pacs.close()
    assert series is not None
    ordered = along_normal(series.instances)
    assert ordered is not None
    assert [i.sop_instance_uid for i in ordered] == _expected_order(ct.datasets)


async def test_a_completion_with_a_wrong_size_or_a_foreign_image_is_refused_listing_them(
    live_stack: LocalStack, enforcing_channel: aio.Channel, people: People, ct: StoredSeries,
    pacs_url: str,
) -> None:  # fmt: skip
    other = store_synthetic_series(pacs_url, slices=2, rows=ROWS, columns=COLUMNS)
    annotation = await _create(enforcing_channel, people, ct.study_uid, ct.series_uid)
    group_id = await _group(enforcing_channel, people, annotation.id, 3)
    images = [png(COLUMNS, ROWS, seed) for seed in range(3)]
    sop_uids = ["", other.sop_instance_uids[0], ""]
    tickets = await _tickets_uploaded(
        enforcing_channel, people, annotation.id, group_id, sop_uids, images
    )
    sizes = {0: (COLUMNS, ROWS), 1: (COLUMNS, ROWS), 2: (ROWS, ROWS)}
    error = await _refused(
        mask_pb2_grpc.MaskServiceStub(enforcing_channel).CompleteUpload(
            mask_pb2.CompleteUploadRequest(
                annotation_id=annotation.id, group_id=group_id,
                uploads=[
                    mask_pb2.CompletedUpload(
                        upload_id=t.upload_id, width=sizes[t.slice_index][0],
                        height=sizes[t.slice_index][1],
                    )
                    for t in tickets
                ],
            ),
            metadata=people.writer.metadata(),
        )
    )  # fmt: skip
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error.details() or ""
    assert "slice 1: sop_instance_uid is not an image of the annotation's series" in details
    assert f"slice 2: size is {ROWS}x{ROWS}, its image is {COLUMNS}x{ROWS}" in details
    assert "slice 0" not in details
    assert other.sop_instance_uids[0] not in details
    count = "select count(*) from annotation_mask where mask_group_id = %s"
    assert _count(live_stack, count, group_id) == 0


def _push_messages(
    annotation_id: int, group_id: int, images: list[bytes], sizes: list[tuple[int, int]]
) -> Iterator[mask_pb2.PushMasksRequest]:
    yield mask_pb2.PushMasksRequest(
        target=mask_pb2.PushTarget(annotation_id=annotation_id, group_id=group_id)
    )
    for index, (image, (width, height)) in enumerate(zip(images, sizes, strict=True)):
        yield mask_pb2.PushMasksRequest(
            slice=mask_pb2.PushSliceHeader(
                slice_index=index, content_type="image/png", size_bytes=len(image),
                width=width, height=height, md5=hashlib.md5(image).hexdigest(),
            )
        )  # fmt: skip
        yield mask_pb2.PushMasksRequest(chunk=image)


async def test_push_binds_by_position_and_refuses_a_wrong_size_leaving_nothing_behind(
    live_stack: LocalStack, enforcing_channel: aio.Channel, people: People, ct: StoredSeries
) -> None:
    stub = mask_pb2_grpc.MaskServiceStub(enforcing_channel)
    annotation = await _create(enforcing_channel, people, ct.study_uid, ct.series_uid)
    images = [png(COLUMNS, ROWS, seed) for seed in range(3)]
    group_id = await _group(enforcing_channel, people, annotation.id, 3)
    error = await _refused(
        stub.PushMasks(
            _push_messages(
                annotation.id, group_id, images, [(COLUMNS, ROWS), (8, 8), (COLUMNS, ROWS)]
            ),
            metadata=people.writer.metadata(),
            timeout=30,
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"slice 1: size is 8x8, its image is {COLUMNS}x{ROWS}" in (error.details() or "")
    count = "select count(*) from annotation_mask where mask_group_id = %s"
    assert _count(live_stack, count, group_id) == 0
    assert live_stack.s3 is not None
    prefix = f"masks/p{people.project_id}/a{annotation.id}/g{group_id}/"
    listed = live_stack.s3.client().list_objects("pacs-masks", prefix=prefix, recursive=True)
    assert list(listed) == []
    reply = await stub.PushMasks(
        _push_messages(annotation.id, group_id, images, [(COLUMNS, ROWS)] * 3),
        metadata=people.writer.metadata(),
        timeout=30,
    )
    assert [m.sop_instance_uid for m in reply.masks] == _expected_order(ct.datasets)[:3]


async def test_masks_of_an_annotation_without_series_are_refused_when_enforced(
    enforcing_channel: aio.Channel, people: People, ct: StoredSeries
) -> None:
    annotation = await _create(enforcing_channel, people, ct.study_uid)
    group_id = await _group(enforcing_channel, people, annotation.id, 1)
    image = png(COLUMNS, ROWS, 1)
    error = await _refused(
        mask_pb2_grpc.MaskServiceStub(enforcing_channel).PushMasks(
            _push_messages(annotation.id, group_id, [image], [(COLUMNS, ROWS)]),
            metadata=people.writer.metadata(),
            timeout=30,
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (error.details() or "").startswith("annotation.series_uid: is required")


# -- a PACS that goes away ----------------------------------------------------------------


async def test_a_silent_pacs_means_unavailable_then_fast_failures_and_health_says_so(
    servers: ServerStarter, artifacts_dir: Path, pacs_url: str, people: People, ct: StoredSeries
) -> None:
    target = urllib3.util.parse_url(pacs_url)
    assert target.host is not None
    assert target.port is not None
    with TcpProxy(target.host, target.port) as proxy:
        linked = _linked(
            servers, artifacts_dir, f"http://{proxy.address}/dicom-web",
            PACS_TIMEOUT_SECONDS="0.5", PACS_BREAKER_FAILURES="2", PACS_BREAKER_OPEN_SECONDS="2",
        )  # fmt: skip
        assert linked.server.health("pacs") == SERVING
        async with aio.insecure_channel(linked.server.address) as channel:
            proxy.blackhole()
            for _ in range(2):
                started = time.monotonic()
                error = await _refused(_create(channel, people, _uid()))
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - started >= 0.5
            # The breaker is open: refused at once, without waiting on the PACS.
            started = time.monotonic()
            error = await _refused(_create(channel, people, ct.study_uid))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "retry in" in (error.details() or "")
            assert time.monotonic() - started < 0.3
            # Health: "pacs" goes NOT_SERVING; the replica stays ready.
            assert _health_becomes(linked.server, "pacs", NOT_SERVING)
            assert linked.server.health("") == SERVING
            assert linked.server.health("pacs.v1.MaskService") == SERVING
            refused = linked.metric("pacs_pacs_requests_total", operation="qido", outcome="refused")
            assert refused >= 1
            proxy.restore()
            await asyncio.sleep(2.0)
            created = await _create(channel, people, ct.study_uid, ct.series_uid)
            assert created.id > 0
            assert _health_becomes(linked.server, "pacs", SERVING)


async def test_warn_mode_writes_while_the_pacs_is_down_and_counts_it(
    servers: ServerStarter, artifacts_dir: Path, live_stack: LocalStack, people: People
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"
    linked = _linked(servers, artifacts_dir, closed, PACS_VALIDATE="warn")
    assert linked.server.health("") == SERVING
    assert linked.server.health("pacs") == NOT_SERVING
    study = _uid()
    async with aio.insecure_channel(linked.server.address) as channel:
        created = await _create(channel, people, study)
    assert created.study_uid == study
    count = "select count(*) from annotation_annotation where study_uid = %s"
    assert _count(live_stack, count, study) == 1
    assert linked.metric("pacs_pacs_validation_warnings_total", reason="pacs_unavailable") == 1
    assert study not in linked.log_path.read_text()
