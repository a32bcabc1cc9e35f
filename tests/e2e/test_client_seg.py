"""Segments, label maps and DICOM SEG through PacsClient and `pacs`, on the real stack.

Uploads with segments run on the session's server; exports and imports on the one linked to
the session's Orthanc (`pacs_server`), with a small synthetic CT stored there first.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pacs.client import PacsClient, encode_png, segment
from pacs.v1 import identity_pb2, mask_pb2, review_pb2
from PIL import Image

from pacs_devstack.issuer import DevIssuer
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from tests.support.pacs import store_synthetic_series
from tests.support.users import ADMIN_ROLE

PACS = Path(sys.executable).parent / "pacs"
COMPLETE = mask_pb2.MASK_GROUP_STATUS_COMPLETE
APPROVED = review_pb2.REVIEW_STATE_APPROVED
SLICES, ROWS, COLUMNS = 8, 64, 64
LIVER = segment(
    1, "Liver", category=("123037004", "SCT", "Anatomical Structure"),
    type=("10200004", "SCT", "Liver"), color=(221, 130, 101),
)  # fmt: skip
LESION = segment(
    2, "Lesion", category=("49755003", "SCT", "Morphologically Altered Structure"),
    type=("52988006", "SCT", "Lesion"), algorithm="automatic",
)  # fmt: skip
SPEC = """
[[segments]]
pixel_value = 1
label = "Liver"
category = ["123037004", "SCT", "Anatomical Structure"]
type = ["10200004", "SCT", "Liver"]
color = "#dd8265"

[[segments]]
pixel_value = 2
label = "Lesion"
type = { value = "52988006", scheme = "SCT", meaning = "Lesion" }
"""


def label_volume() -> np.ndarray:
    """Both segments on every slice, so no frame is empty and a SEG keeps all slices."""
    volume = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    for index in range(SLICES):
        volume[index, 8 : 40 + index, 10:50] = 1
        volume[index, 20 + index : 28 + index, 20:30] = 2
    return volume


def decoded(path: Path) -> np.ndarray:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        assert image.mode == "L"
        return np.asarray(image)


@pytest.fixture(scope="module")
def token(issuer: DevIssuer) -> str:
    return issuer.mint(f"seg-client-{uuid.uuid4().hex[:8]}", realm_roles=[ADMIN_ROLE])


def cli(address: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    environment |= {"PACS_SERVER": address, "PACS_TOKEN": token, "PACS_INSECURE": "1"}
    return subprocess.run(
        [PACS, *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- upload with segments, on the unlinked server ---------------------------------------------


@pytest.fixture(scope="module")
def address(live_stack: LocalStack) -> str:
    assert live_stack.server is not None
    return live_stack.server.address


@pytest.fixture(scope="module")
def client(address: str, token: str) -> Iterator[PacsClient]:
    with PacsClient(address, token, insecure=True) as client:
        yield client


@pytest.fixture(scope="module")
def annotation_id(client: PacsClient) -> int:
    project = client.create_project(f"seg-client-{uuid.uuid4().hex[:8]}")
    return client.create_annotation(
        project_id=project.id, study_uid="1.2.826.0.1.3680043.8.498.1",
        series_uid="1.2.826.0.1.3680043.8.498.1.1", annotation_type="segmentation", data={},
    ).id  # fmt: skip


def test_a_label_map_volume_is_uploaded_with_its_segments(
    client: PacsClient, annotation_id: int, tmp_path: Path
) -> None:
    volume = label_volume()
    result = client.upload_mask_group(
        annotation_id, segments=[LIVER, LESION], label_maps=volume, model_name="TotalSegmentator",
        version="2.4.0", group_name="abdomen",
    )  # fmt: skip
    group = result.group
    assert (group.status, group.slice_count) == (COMPLETE, SLICES)
    stored = client.get_mask_group(annotation_id, group.id)
    assert [(s.pixel_value, s.label) for s in stored.segments] == [(1, "Liver"), (2, "Lesion")]
    liver, lesion = stored.segments
    assert liver.segmented_property_type.code_meaning == "Liver"
    assert (liver.display_color.red, liver.display_color.green) == (221, 130)
    # Left unset by the client, filled by the server: the model's segments are AUTOMATIC.
    assert liver.algorithm_type == mask_pb2.SEGMENT_ALGORITHM_TYPE_AUTOMATIC
    assert lesion.segmented_property_category.code_value == "49755003"

    download = client.download_mask_group(annotation_id, group.id, tmp_path)
    assert len(download.files) == SLICES
    for index, path in enumerate(download.files):
        assert path.read_bytes() == encode_png(volume[index])
        assert np.array_equal(decoded(path), volume[index])


def test_label_maps_resume_into_a_group_under_its_own_segments(
    client: PacsClient, annotation_id: int
) -> None:
    volume = label_volume()
    group = client.create_mask_group(
        annotation_id, slice_count=SLICES, model_name="unet", segments=[LIVER, LESION]
    )
    half = {index: volume[index] for index in range(SLICES // 2)}
    first = client.upload_mask_group(annotation_id, label_maps=half, group_id=group.id)
    assert first.group.completed_slices == SLICES // 2
    rest = client.upload_mask_group(annotation_id, label_maps=volume, group_id=group.id)
    assert (rest.uploaded, rest.skipped) == (SLICES - SLICES // 2, SLICES // 2)
    assert rest.group.status == COMPLETE
    # The group's segments, read from the server, decide which values a label map may hold.
    plain = client.create_mask_group(annotation_id, slice_count=1)
    with pytest.raises(ValueError, match="belong to no segment"):
        client.upload_mask_group(annotation_id, label_maps=volume[:1], group_id=plain.id)


def test_label_maps_with_an_undeclared_value_create_nothing(
    client: PacsClient, annotation_id: int
) -> None:
    before = [g.id for g in client.list_mask_groups(annotation_id)]
    volume = label_volume()
    volume[3, 0, 0] = 9
    with pytest.raises(ValueError, match=r"slice 3: pixel value\(s\) 9 belong to no segment"):
        client.upload_mask_group(annotation_id, segments=[LIVER, LESION], label_maps=volume)
    assert [g.id for g in client.list_mask_groups(annotation_id)] == before


def test_the_server_refuses_a_retired_scheme_in_one_cli_line(
    address: str, token: str, annotation_id: int, tmp_path: Path
) -> None:
    (tmp_path / "slices").mkdir()
    (tmp_path / "slices" / "0000.png").write_bytes(encode_png(label_volume()[0]))
    spec = tmp_path / "segments.json"
    spec.write_text(
        json.dumps([{"pixel_value": 1, "label": "Liver", "type": ["T-62000", "SRT", "Liver"]}])
    )
    done = cli(address, token, "masks", "push", str(tmp_path / "slices"), "--annotation",
               str(annotation_id), "--segments", str(spec))  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "SRT is retired; use SCT" in done.stderr
    assert done.stderr.count("\n") == 1


def test_cli_push_takes_segments_from_a_toml_spec(
    address: str, token: str, client: PacsClient, annotation_id: int, tmp_path: Path
) -> None:
    volume = label_volume()
    folder = tmp_path / "slices"
    folder.mkdir()
    for index in range(SLICES):
        (folder / f"{index:04d}.png").write_bytes(encode_png(volume[index]))
    spec = tmp_path / "segments.toml"
    spec.write_text(SPEC)
    pushed = ok(
        cli(address, token, "masks", "push", str(folder), "--annotation", str(annotation_id),
            "--segments", str(spec), "--name", "from-spec")
    )  # fmt: skip
    assert pushed.rstrip().endswith(f"group COMPLETE, {SLICES}/{SLICES} slices")
    group_id = int(pushed.split(" to group ")[1].split()[0])
    group = client.get_mask_group(annotation_id, group_id)
    assert [s.label for s in group.segments] == ["Liver", "Lesion"]
    assert group.segments[1].segmented_property_type.code_value == "52988006"
    # Not given: the documented default category, Tissue.
    assert group.segments[1].segmented_property_category.code_meaning == "Tissue"

    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[segments]]\npixel_value = 1\nlabel = "a"\ncolor = "red"\n')
    done = cli(address, token, "masks", "push", str(folder), "--annotation", str(annotation_id),
               "--segments", str(wrong))  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr
        == "error: --segments: segment 0: a colour is #rrggbb or (red, green, blue), not 'red'\n"
    )


# -- export and import, on the server linked to the PACS --------------------------------------


@dataclass(frozen=True)
class Linked:
    client: PacsClient
    address: str
    annotation_id: int
    study_uid: str
    series_uid: str
    # Uploaded, submitted by the uploader and approved by the reviewer: it may be exported.
    group_id: int
    volume: np.ndarray


def upload_group(
    client: PacsClient, annotation_id: int, volume: np.ndarray, group_name: str
) -> mask_pb2.MaskGroup:
    """A COMPLETE group of `volume`'s label maps, as a segmentation model uploads it."""
    result = client.upload_mask_group(
        annotation_id, segments=[LIVER, LESION], label_maps=volume,
        model_name="TotalSegmentator", version="2.4.0", group_name=group_name,
    )  # fmt: skip
    assert result.group.status == COMPLETE
    return result.group


@pytest.fixture(scope="module")
def linked(
    pacs_server: ServerProcess, pacs_url: str, token: str, issuer: DevIssuer
) -> Iterator[Linked]:
    series = store_synthetic_series(pacs_url, slices=SLICES, rows=ROWS, columns=COLUMNS)
    reviewer_token = issuer.mint(f"seg-reviewer-{uuid.uuid4().hex[:8]}")
    with (
        PacsClient(pacs_server.address, token, insecure=True, timeout=120) as client,
        PacsClient(pacs_server.address, reviewer_token, insecure=True) as reviewer,
    ):
        project = client.create_project(f"seg-export-{uuid.uuid4().hex[:8]}")
        client.identity.AddProjectMember(
            identity_pb2.AddProjectMemberRequest(
                project_id=project.id, user_id=reviewer.login().user.id,
                role=identity_pb2.PROJECT_ROLE_REVIEWER,
            )
        )  # fmt: skip
        annotation = client.create_annotation(
            project_id=project.id, study_uid=series.study_uid, series_uid=series.series_uid,
            annotation_type="segmentation", data={},
        )  # fmt: skip
        volume = label_volume()
        group = upload_group(client, annotation.id, volume, "abdomen")
        # The uploader submits; approving is the reviewer's, as nobody approves their own work.
        client.submit(annotation.id, group_id=group.id)
        assert reviewer.approve(annotation.id, group_id=group.id).review.state == APPROVED
        yield Linked(
            client, pacs_server.address, annotation.id, series.study_uid, series.series_uid,
            group.id, volume,
        )  # fmt: skip


def test_export_to_the_pacs_saves_the_seg_and_is_listed(linked: Linked, tmp_path: Path) -> None:
    client = linked.client
    request_id = str(uuid.uuid4())
    result = client.export_mask_group(
        linked.annotation_id, linked.group_id, store_in_pacs=True, request_id=request_id,
        save_to=tmp_path,
    )  # fmt: skip
    export = result.export
    assert result.stored_in_pacs, export.pacs_failure_reason
    assert export.segment_count == 2
    assert result.saved == tmp_path / f"seg-group{linked.group_id}-export{export.id}.dcm"
    assert result.saved.stat().st_size == export.size_bytes
    seg = hd.seg.segread(result.saved)
    assert seg.SeriesInstanceUID == export.seg_series_uid
    assert seg.SOPInstanceUID == export.seg_sop_instance_uid
    assert seg.StudyInstanceUID == linked.study_uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Lesion"]
    # A viewer in the PACS shows which review state was exported.
    assert seg.ContentLabel == "SEG_APPROVED"
    assert seg.SeriesDescription == "abdomen (APPROVED)"

    # The same request id: the same export, not a second SEG.
    again = client.export_mask_group(
        linked.annotation_id, linked.group_id, store_in_pacs=True, request_id=request_id
    )
    assert again.export.id == export.id
    assert again.saved is None

    listed = list(client.list_exports(linked.annotation_id, linked.group_id))
    assert export.id in [item.export.id for item in listed]
    mine = next(item for item in listed if item.export.id == export.id)
    assert mine.download_url
    fetched = tmp_path / "listed.dcm"
    from pacs.client.exports import save_export

    assert save_export(mine, fetched).read_bytes() == result.saved.read_bytes()


def test_a_draft_is_exported_only_once_the_project_allows_it(
    linked: Linked, token: str, tmp_path: Path
) -> None:
    client = linked.client
    project = client.create_project(f"seg-drafts-{uuid.uuid4().hex[:8]}")
    annotation = client.create_annotation(
        project_id=project.id, study_uid=linked.study_uid, series_uid=linked.series_uid,
        annotation_type="segmentation", data={},
    )  # fmt: skip
    draft = upload_group(client, annotation.id, linked.volume, "liver draft")
    assert draft.review.state == review_pb2.REVIEW_STATE_DRAFT
    with pytest.raises(grpc.RpcError) as raised:
        client.export_mask_group(annotation.id, draft.id, store_in_pacs=True)
    error = raised.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "only approved groups go to the PACS" in (error.details() or "")
    refused = cli(linked.address, token, "masks", "export", str(draft.id), "--annotation",
                  str(annotation.id), "--to-pacs")  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: FAILED_PRECONDITION: the mask group is draft")
    assert refused.stderr.count("\n") == 1
    assert list(client.list_exports(annotation.id, draft.id)) == []

    assert client.get_project(project.id).export_unapproved is False
    assert client.update_project(project.id, export_unapproved=True).export_unapproved is True
    result = client.export_mask_group(annotation.id, draft.id, store_in_pacs=True, save_to=tmp_path)
    assert result.stored_in_pacs, result.export.pacs_failure_reason
    assert result.saved is not None
    seg = pydicom.dcmread(result.saved, stop_before_pixels=True)
    # Exported all the same, the SEG says it is a draft.
    assert seg.ContentLabel == "SEG_DRAFT"
    assert seg.SeriesDescription == "liver draft (DRAFT)"


def test_import_from_the_pacs_and_from_a_file_gives_back_the_label_maps(
    linked: Linked, tmp_path: Path
) -> None:
    client = linked.client
    result = client.export_mask_group(
        linked.annotation_id, linked.group_id, store_in_pacs=True, save_to=tmp_path / "seg.dcm"
    )
    assert result.stored_in_pacs, result.export.pacs_failure_reason
    export = result.export
    from_pacs = client.import_segmentation(
        linked.annotation_id,
        from_pacs=(linked.study_uid, export.seg_series_uid, export.seg_sop_instance_uid),
        group_name="from-pacs",
    )
    assert result.saved is not None
    from_file = client.import_segmentation(linked.annotation_id, path=result.saved)
    for group in (from_pacs, from_file):
        assert (group.status, group.slice_count) == (COMPLETE, SLICES)
        assert [(s.pixel_value, s.label) for s in group.segments] == [(1, "Liver"), (2, "Lesion")]
        assert group.segments[0].segmented_property_type.code_value == "10200004"
        assert group.model_name == "TotalSegmentator"
        folder = tmp_path / f"group-{group.id}"
        download = client.download_mask_group(linked.annotation_id, group.id, folder)
        for index, path in enumerate(download.files):
            assert np.array_equal(decoded(path), linked.volume[index]), (group.id, index)
    assert from_pacs.group_name == "from-pacs"


def test_cli_exports_to_the_pacs_lists_and_imports(
    linked: Linked, token: str, tmp_path: Path
) -> None:
    group = str(linked.group_id)
    annotation = str(linked.annotation_id)
    out = ok(cli(linked.address, token, "masks", "export", group, "--annotation", annotation,
                 "--to-pacs", "--output", str(tmp_path / "cli.dcm")))  # fmt: skip
    assert out.startswith(f"exported group {group} as export ")
    assert "2 segment(s)" in out
    assert f"PACS stored; saved {tmp_path / 'cli.dcm'}" in out
    assert pydicom.dcmread(tmp_path / "cli.dcm").Modality == "SEG"
    export_id = out.split(" as export ")[1].split(":")[0]

    listed = json.loads(ok(cli(linked.address, token, "masks", "exports", group, "--annotation",
                               annotation, "--json")))  # fmt: skip
    assert export_id in [row["id"] for row in listed]
    assert all("download_url" not in row for row in listed)
    text = ok(cli(linked.address, token, "masks", "exports", group, "--annotation", annotation))
    assert any(line.split()[0] == export_id for line in text.splitlines())

    imported = ok(cli(linked.address, token, "masks", "import", str(tmp_path / "cli.dcm"),
                      "--annotation", annotation))  # fmt: skip
    assert imported.startswith("imported group ")
    assert f"{SLICES}/{SLICES} slices, 2 segment(s) (Liver, Lesion)" in imported


def test_cli_import_refusals_are_one_line(linked: Linked, token: str, tmp_path: Path) -> None:
    not_dicom = tmp_path / "not.dcm"
    not_dicom.write_bytes(b"this is not DICOM" * 20)
    done = cli(linked.address, token, "masks", "import", str(not_dicom), "--annotation",
               str(linked.annotation_id))  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert done.stderr.count("\n") == 1
    both = cli(linked.address, token, "masks", "import", str(not_dicom), "--from-pacs", "1", "2",
               "3", "--annotation", str(linked.annotation_id))  # fmt: skip
    assert both.returncode == 2
    assert both.stderr == "error: give exactly one of FILE or --from-pacs STUDY SERIES INSTANCE\n"
    missing = cli(linked.address, token, "masks", "export", "987654321", "--annotation",
                  str(linked.annotation_id))  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: NOT_FOUND: ")
