"""The local stack's PACS: Debian's Orthanc with DICOMweb, and the synthetic CT stored in it."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import urllib3
from dicomweb_client import DICOMwebClient
from pydicom import Dataset

from pacs_devstack.orthanc import Orthanc, OrthancStartError
from pacs_devstack.sample_ct import SYNTHETIC_PATIENT, synthetic_ct
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack, _default_port_or_free
from tests.support.pacs import running_orthanc, store_synthetic_series
from tests.support.stacks import own_stack

_STUDY_UID, _SERIES_UID = "0020000D", "0020000E"


def _value(item: dict[str, dict[str, list[object]]], tag: str) -> object:
    return item[tag]["Value"][0]


def test_orthanc_starts_on_free_ports_answers_qido_and_restarts_with_its_data(
    scratch_dir: Callable[[str], Path],
) -> None:
    with running_orthanc(scratch_dir("orthanc")) as orthanc:
        process = orthanc.process
        system = urllib3.request("GET", f"{orthanc.url}/system", timeout=5).json()
        assert system["HttpPort"] == orthanc.http_port
        assert system["DicomPort"] == orthanc.dicom_port
        assert orthanc.dicomweb_url == f"http://127.0.0.1:{orthanc.http_port}/dicom-web"
        reply = urllib3.request(
            "GET",
            f"{orthanc.dicomweb_url}/studies",
            headers={"Accept": "application/dicom+json"},
            timeout=5,
        )
        assert reply.status in (200, 204)  # an empty PACS: no studies
        assert not (reply.data and reply.json())

        # A restart (the PACS-down tests do this) keeps its URL and what it stored.
        series = store_synthetic_series(orthanc.dicomweb_url, slices=2, rows=16, columns=16)
        url = orthanc.dicomweb_url
        orthanc.stop()
        assert process.poll() is not None, "stop() must end Orthanc"
        orthanc.start()
        assert orthanc.dicomweb_url == url
        studies = urllib3.request(
            "GET", f"{url}/studies", headers={"Accept": "application/dicom+json"}, timeout=5
        ).json()
        assert [_value(s, _STUDY_UID) for s in studies] == [series.study_uid]
        process = orthanc.process
    assert process.poll() is not None, "leaving running_orthanc must end Orthanc"


def test_a_second_orthanc_on_a_taken_port_fails_instead_of_answering_as_the_first(
    scratch_dir: Callable[[str], Path],
) -> None:
    # Orthanc on a taken HTTP port keeps running for seconds while the first one answers.
    with running_orthanc(scratch_dir("orthanc")) as first:
        for http_port, dicom_port in ((first.http_port, 0), (0, first.dicom_port)):
            clash = Orthanc(scratch_dir("orthanc"), http_port=http_port, dicom_port=dicom_port)
            with pytest.raises(OrthancStartError, match="already in use"):
                clash.start(timeout=15)
            assert not clash.running
        assert urllib3.request("GET", f"{first.url}/system", timeout=5).status == 200


def test_stored_synthetic_series_is_found_and_described_by_dicomweb(pacs_url: str) -> None:
    series = store_synthetic_series(pacs_url, slices=64, rows=256, columns=256)
    with requests.Session() as session:
        client = DICOMwebClient(pacs_url, session=session)
        studies = client.search_for_studies(search_filters={"StudyInstanceUID": series.study_uid})
        assert [_value(s, _STUDY_UID) for s in studies] == [series.study_uid]
        assert studies[0]["00100010"]["Value"][0]["Alphabetic"] == SYNTHETIC_PATIENT
        found = client.search_for_series(
            series.study_uid, search_filters={"SeriesInstanceUID": series.series_uid}
        )
        assert [_value(s, _SERIES_UID) for s in found] == [series.series_uid]
        assert _value(found[0], "00080060") == "CT"

        metadata = client.retrieve_series_metadata(series.study_uid, series.series_uid)
    assert len(metadata) == 64
    assert {(_value(m, "00280010"), _value(m, "00280011")) for m in metadata} == {(256, 256)}
    assert {m["00080018"]["Value"][0] for m in metadata} == set(series.sop_instance_uids)
    assert len({_value(m, "00200052") for m in metadata}) == 1  # one frame of reference


def test_synthetic_ct_steps_along_the_slice_normal_and_shows_a_phantom() -> None:
    datasets = synthetic_ct(slices=5, rows=32, columns=48)
    normal = np.cross(
        np.array(datasets[0].ImageOrientationPatient[:3], dtype=float),
        np.array(datasets[0].ImageOrientationPatient[3:], dtype=float),
    )
    along = [
        float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))) for ds in datasets
    ]
    steps = np.diff(along)
    assert np.allclose(steps, float(datasets[0].SliceThickness))
    assert len({ds.SOPInstanceUID for ds in datasets}) == 5
    assert {str(ds.SOPInstanceUID)[:5] for ds in datasets} == {"2.25."}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    pixels = datasets[2].pixel_array
    assert pixels.shape == (32, 48)
    assert pixels.dtype == np.uint16
    assert pixels.min() < pixels.max(), "a blank image shows nothing in a viewer"


def test_synthetic_ct_uses_a_given_uid_root() -> None:
    datasets = synthetic_ct(slices=2, rows=8, columns=8, uid_root="1.2.826.0.1.3680043.10.999")
    uids = [
        datasets[0].StudyInstanceUID,
        datasets[0].SeriesInstanceUID,
        datasets[0].FrameOfReferenceUID,
        *(ds.SOPInstanceUID for ds in datasets),
    ]
    assert all(str(uid).startswith("1.2.826.0.1.3680043.10.999.") for uid in uids)
    assert all(len(str(uid)) <= 64 for uid in uids)


def test_dciodvfy_finds_no_error_in_a_synthetic_ct_instance(
    scratch_dir: Callable[[str], Path],
) -> None:
    # CI installs dicom3tools (.ci/run): a missing validator fails rather than skips.
    assert shutil.which("dciodvfy"), "dciodvfy is missing: sudo apt-get install dicom3tools"
    dataset: Dataset = synthetic_ct(slices=3)[1]
    path = scratch_dir("dciodvfy") / "ct.dcm"
    dataset.save_as(path, enforce_file_format=True)
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    report = result.stdout + result.stderr
    assert "CTImage" in report, report
    assert [line for line in report.splitlines() if "Error" in line] == []


def test_readiness_is_this_orthancs_own_not_a_neighbours_on_the_port(
    scratch_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the port check (a race lost), only the start-up line in this start's log
    # tells the two apart: the first one answers GET /system all along.
    with running_orthanc(scratch_dir("orthanc")) as first:
        monkeypatch.setattr("pacs_devstack.orthanc.port_in_use", lambda port: False)
        clash = Orthanc(scratch_dir("orthanc"), http_port=first.http_port, dicom_port=0)
        with pytest.raises(OrthancStartError, match="orthanc exited") as raised:
            clash.start(timeout=20)
        assert "already in use" in str(raised.value)  # the log tail says why
        assert not clash.running


def test_a_stack_with_pacs_starts_orthanc_links_its_server_and_stops_it(
    scratch_dir: Callable[[str], Path], artifacts_dir: Path
) -> None:
    with own_stack(
        scratch_dir("pacs-stack"), server_log=artifacts_dir / "pacs-stack-server.log", pacs=True
    ) as stack:
        orthanc = stack.orthanc
        assert orthanc is not None
        assert stack.pacs_url == orthanc.dicomweb_url
        assert orthanc.data_dir.is_relative_to(stack.config.data_dir)
        assert stack.server is not None
        server_env = psutil.Process(stack.server.process.pid).environ()
        assert server_env["PACS_DICOMWEB_URL"] == stack.pacs_url
        assert server_env["PACS_VALIDATE"] == "enforce"
        process = orthanc.process
    assert process.poll() is not None, "stopping the stack stops its Orthanc"


def test_a_stack_without_pacs_starts_no_orthanc(live_stack: LocalStack) -> None:
    # The session's stack: older tests use made-up UIDs, so its server checks nothing.
    assert live_stack.orthanc is None
    assert live_stack.pacs_url == ""
    assert live_stack.server is not None
    assert "PACS_DICOMWEB_URL" not in psutil.Process(live_stack.server.process.pid).environ()


def test_pacs_server_fixture_is_linked_to_the_session_pacs(
    pacs_server: ServerProcess, pacs_url: str
) -> None:
    server_env = psutil.Process(pacs_server.process.pid).environ()
    assert server_env["PACS_DICOMWEB_URL"] == pacs_url
    assert server_env["PACS_VALIDATE"] == "enforce"


def test_orthanc_port_moves_aside_from_a_held_default_but_an_explicit_one_is_kept() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        moved = _default_port_or_free({}, "PACS_DEV_ORTHANC_HTTP_PORT", held)
        assert moved != held
        assert moved > 0
        explicit = {"PACS_DEV_ORTHANC_HTTP_PORT": str(held)}
        assert _default_port_or_free(explicit, "PACS_DEV_ORTHANC_HTTP_PORT", 8042) == held
    assert _default_port_or_free({}, "PACS_DEV_ORTHANC_HTTP_PORT", held) == held
