"""Debian's Orthanc with its DICOMweb plugin, as the local stack's PACS.

Orthanc is run directly (``Orthanc CONFIG.json``), never as the system service the
Debian package sets up: the configuration written here is its whole configuration,
so ``/etc/orthanc`` and a service already running on 8042 do not matter. What the
configuration decides, and why:

* Config, index and stored files live under the runner's data directory.
* HTTP has no bind-address option in Orthanc 1.10; ``RemoteAccessAllowed`` false
  makes it refuse every request that does not come from loopback, which is what
  makes running without authentication safe.
* The DICOM (DIMSE) server listens on its own port so two instances never clash,
  but answers only C-ECHO: no peer modality is configured, and store, find, get and
  move are not allowed to unknown callers. Images arrive through STOW-RS.
* WebDAV, Lua and saved jobs are off: a development PACS needs none of them.

Orthanc that finds its HTTP port taken logs the error but takes seconds to exit,
while the port answers with the *other* server's voice. So the ports are checked
free before the start, and ready means Orthanc wrote "Orthanc has started" to this
start's part of the log and /system reports this instance's ports.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import urllib3

from pacs_devstack.ports import DEFAULT_HOST, free_ports
from pacs_devstack.process import dying_with_parent, log_tail, stop_child

_log = logging.getLogger(__name__)

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "sudo apt-get install orthanc orthanc-dicomweb"
DICOMWEB_ROOT = "/dicom-web"
_READY_POLL_SECONDS = 0.1
_STARTED_LINE = b"Orthanc has started"


class OrthancStartError(RuntimeError):
    """Orthanc exited or did not answer in time; the message ends with its log."""


def orthanc_binary() -> Path | None:
    """Orthanc's executable: Debian's path, else whatever PATH has."""
    if ORTHANC_BINARY.is_file():
        return ORTHANC_BINARY
    found = shutil.which("Orthanc")
    return Path(found) if found else None


def orthanc_available() -> bool:
    """Whether Orthanc and its DICOMweb plugin are installed (`INSTALL_HINT` adds both)."""
    return orthanc_binary() is not None and DICOMWEB_PLUGIN.is_file()


class Orthanc:
    """One Orthanc serving DICOMweb on loopback, owning `data_dir`.

    A port of 0 is replaced by a free one on first use and then kept, so a restart
    serves the same URL. Call start/stop from a long-lived thread (normally the main
    thread): Linux sends the parent-death signal when the thread that started the
    child ends.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        http_port: int,
        dicom_port: int,
        log_path: Path | None = None,
        name: str = "DEVPACS",
    ) -> None:
        self._data_dir = data_dir.absolute()
        if not (http_port and dicom_port):
            spare = iter(free_ports(2))
            http_port, dicom_port = http_port or next(spare), dicom_port or next(spare)
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.log_path = log_path or self._data_dir / "orthanc.log"
        self._name = name
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def url(self) -> str:
        """Orthanc's own REST API (`/system`, `/studies`, ...)."""
        return f"http://{DEFAULT_HOST}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root: QIDO-RS, WADO-RS and STOW-RS below it."""
        return f"{self.url}{DICOMWEB_ROOT}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("orthanc not started")
        return self._process

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration, start Orthanc, and wait until DICOMweb answers."""
        if self.running:
            return
        binary = orthanc_binary()
        if binary is None or not DICOMWEB_PLUGIN.is_file():
            raise OrthancStartError(f"Orthanc or its DICOMweb plugin is missing: {INSTALL_HINT}")
        for port in (self.http_port, self.dicom_port):
            if port_in_use(port):
                raise OrthancStartError(f"port {port} on {DEFAULT_HOST} is already in use")
        started = time.monotonic()
        config = self._write_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== starting orthanc on {self.url} ===\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                dying_with_parent([str(binary), str(config)]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Relative paths Orthanc might use (temporary files) stay in its directory.
                cwd=self._data_dir,
                # Own session: a Ctrl-C reaches only the parent, which stops children in order.
                start_new_session=True,
            )
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self._terminate(signal.SIGKILL, timeout=5.0)
            raise
        _log.info("Orthanc ready at %s in %.1fs", self.url, time.monotonic() - started)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Orthanc closes its index cleanly), then SIGKILL if need be."""
        self._terminate(signal.SIGTERM, timeout)

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def config(self) -> dict[str, object]:
        """The whole configuration Orthanc runs with."""
        storage = str(self._data_dir / "storage")
        return {
            "Name": self._name,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpThreadsCount": 16,
            "DicomServerEnabled": True,
            "DicomAet": self._name,
            "DicomPort": self.dicom_port,
            "DicomThreadsCount": 1,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": {},
            "OrthancPeers": {},
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
            "LuaScripts": [],
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            # A PACS keeps the first copy of an instance: every new object needs a new UID.
            "OverwriteInstances": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {
                "Enable": True,
                "Root": f"{DICOMWEB_ROOT}/",
                "EnableWado": False,
                "Ssl": False,
            },
        }

    def _write_config(self) -> Path:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        (self._data_dir / "storage").mkdir(exist_ok=True)
        path = self._data_dir / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2) + "\n")
        return path

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_child(process, sig, timeout)

    def _wait_ready(self, deadline: float) -> None:
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=2), retries=False)
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise self._start_error(f"orthanc exited with code {code} during start-up")
                problem = self._not_ready(http)
                if problem is None:
                    return
                if time.monotonic() >= deadline:
                    raise self._start_error(f"orthanc not ready at {self.url} in time ({problem})")
                time.sleep(_READY_POLL_SECONDS)
        finally:
            http.clear()

    def _not_ready(self, http: urllib3.PoolManager) -> str | None:
        if not self._logged_start():
            return "no start-up line in its log yet"
        try:
            system = http.request("GET", f"{self.url}/system")
        except urllib3.exceptions.HTTPError as exc:
            return f"GET /system: {type(exc).__name__}"
        if system.status != 200:
            return f"GET /system: HTTP {system.status}"
        ports = system.json()
        if (ports.get("HttpPort"), ports.get("DicomPort")) != (self.http_port, self.dicom_port):
            raise self._start_error(f"another server answers on {self.url}")
        # Plugins load before the HTTP server starts, so one look settles it.
        studies = http.request(
            "GET", f"{self.dicomweb_url}/studies?limit=1", headers={"Accept": "application/json"}
        )
        if studies.status != 200:
            raise self._start_error(
                f"orthanc answers but its DICOMweb plugin does not (HTTP {studies.status})"
            )
        return None

    def _logged_start(self) -> bool:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return _STARTED_LINE in log.read()
        except OSError:
            return False

    def _start_error(self, reason: str) -> OrthancStartError:
        return OrthancStartError(f"{reason}; log {self.log_path}:\n{log_tail(self.log_path)}")


def port_in_use(port: int) -> bool:
    """Whether something listens on `port` (any interface), as Orthanc would find it."""
    # Orthanc binds every interface. With SO_REUSEADDR, as Orthanc binds, connections
    # in TIME_WAIT from a previous run do not count; on Linux a listener still does.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - probing, never listening
        except OSError:
            return True
    return False
