"""Saving an export's .dcm from its signed URL: checked against the record, written whole."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pacs.client.exports import ExportDownloadError, ExportResult, save_export
from pacs.v1 import mask_pb2

PART10 = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00" * 8


@pytest.fixture(scope="module")
def storage() -> Iterator[str]:
    """Serves /ok as a Part-10 file, /not-dicom as other bytes, /expired as a 403."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/expired":
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = PART10 if path == "/ok" else b"x" * len(PART10)
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def result(url: str, size: int = len(PART10)) -> ExportResult:
    export = mask_pb2.MaskGroupExport(id=7, mask_group_id=3, size_bytes=size)
    return ExportResult(export, url)


def test_a_folder_gets_a_file_named_by_ids(storage: str, tmp_path: Path) -> None:
    saved = save_export(result(f"{storage}/ok?X-Amz-Signature=secret"), tmp_path)
    assert saved == tmp_path / "seg-group3-export7.dcm"
    assert saved.read_bytes() == PART10
    assert save_export(result(f"{storage}/ok"), tmp_path / "mine.dcm").read_bytes() == PART10


@pytest.mark.parametrize(
    ("path", "size", "message"),
    [
        ("/ok", len(PART10) + 1, f"got {len(PART10)} bytes, the record says {len(PART10) + 1}"),
        ("/not-dicom", len(PART10), "not a DICOM Part-10 file"),
        ("/expired", len(PART10), r"download failed \(HTTP 403\)"),
    ],
)
def test_a_wrong_download_writes_nothing_and_names_no_url(
    storage: str, tmp_path: Path, path: str, size: int, message: str
) -> None:
    with pytest.raises(ExportDownloadError, match=message) as raised:
        save_export(result(f"{storage}{path}?X-Amz-Signature=secret", size), tmp_path)
    assert "secret" not in str(raised.value)
    assert storage not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_an_export_without_a_url_says_so(tmp_path: Path) -> None:
    with pytest.raises(ExportDownloadError, match="export 7: the server gave no download URL"):
        save_export(result(""), tmp_path)
