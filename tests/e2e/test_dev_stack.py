"""`pacs-dev run` — what `make run` runs — on a fresh data directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest
import urllib3
from grpc_health.v1 import health_pb2
from pacs.v1 import identity_pb2, identity_pb2_grpc

from pacs_devstack.ports import free_ports
from pacs_devstack.server import ServerProcess

pytestmark = pytest.mark.slow


def _start_dev(data_dir: Path, ports: list[int], log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in (
            "DATABASE_URL",
            "MIGRATION_DATABASE_URL",
            "S3_ENDPOINT",
            "S3_ACCESS_KEY",
            "S3_SECRET_KEY",
            "PACS_DICOMWEB_URL",
            "PACS_VALIDATE",
        )
    }
    env.update(
        GRPC_PORT=str(ports[0]),
        PACS_DEV_POSTGRES_PORT=str(ports[1]),
        PACS_DEV_S3_PORT=str(ports[2]),
        # Never the fixed defaults: a developer's own `make run` may hold them.
        PACS_DEV_HTTP_PORT=str(ports[3]),
        PACS_DEV_VIEWER_PORT=str(ports[4]),
        PACS_DEV_ISSUER_PORT=str(ports[5]),
        PACS_DEV_ORTHANC_HTTP_PORT=str(ports[6]),
        PACS_DEV_ORTHANC_DICOM_PORT=str(ports[7]),
    )
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pacs_devstack", "run", "--data-dir", str(data_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_for_banner(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if "Press Ctrl-C to stop everything." in text:
            return text
        assert process.poll() is None, f"pacs-dev run exited early:\n{text}"
        time.sleep(0.2)
    raise AssertionError(f"no banner within {timeout}s:\n{log_path.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> tuple[int, set[int]]:
    children = _descendants(process.pid)
    process.send_signal(signal.SIGINT)
    code = process.wait(60)
    return code, {pid for pid in children if _running(pid)}


def _descendants(pid: int) -> set[int]:
    # A short-lived grandchild can end while psutil walks the tree; walk it again.
    for _ in range(5):
        try:
            return {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            time.sleep(0.1)
    return {c.pid for c in psutil.Process(pid).children(recursive=True)}


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_dev_starts_everything_and_ctrl_c_stops_every_child(
    scratch_dir: Callable[[str], Path], artifacts_dir: Path
) -> None:
    ports = free_ports(8)
    log_path = artifacts_dir / "dev-stack.log"
    data_dir = scratch_dir("dev") / "data"

    process = _start_dev(data_dir, ports, log_path)
    try:
        banner = _wait_for_banner(process, log_path, timeout=90)
        assert f"127.0.0.1:{ports[0]}" in banner
        assert re.search(r"migrations: \d+ applied", banner)
        server = ServerProcess({}, ports[0])
        assert server.health() == health_pb2.HealthCheckResponse.SERVING
        assert "pacs-dev token" in banner
        token = _login_with_a_dev_token(data_dir, server.address)
        rest = f"http://127.0.0.1:{ports[3]}"
        assert f"{rest}/api/" in banner
        reply = urllib3.request(
            "POST", f"{rest}/api/auth/login", body=b"{}", timeout=10,
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )  # fmt: skip
        assert reply.status == 200
        assert reply.json()["user"]["username"] == "alice"
        sample = _sample_in_the_local_pacs(banner, ports[6])
        server_env = _server_environment(process)
        assert server_env["PACS_DICOMWEB_URL"] == f"http://127.0.0.1:{ports[6]}/dicom-web"
        assert server_env["PACS_VALIDATE"] == "enforce"
    finally:
        code, survivors = _stop(process)
    assert code == 0
    assert survivors == set(), "Ctrl-C must stop PostgreSQL, SeaweedFS, Orthanc and the server"

    # A second run reuses the data: nothing left to migrate.
    process = _start_dev(data_dir, ports, log_path)
    try:
        banner = _wait_for_banner(process, log_path, timeout=90)
        assert "migrations: 0 applied" in banner
        # Stored once: the same study is printed, and it is still the PACS's only one.
        assert _sample_in_the_local_pacs(banner, ports[6]) == sample
    finally:
        code, _ = _stop(process)
    assert code == 0


def _server_environment(dev: subprocess.Popen[bytes]) -> dict[str, str]:
    servers = [
        child
        for child in psutil.Process(dev.pid).children(recursive=True)
        if child.cmdline()[-2:] == ["pacs_grpc", "serve"]
    ]
    assert len(servers) == 1
    return servers[0].environ()


def _sample_in_the_local_pacs(banner: str, http_port: int) -> tuple[str, str]:
    """The banner's DICOMweb URL and sample UIDs, checked against the PACS with QIDO-RS."""
    dicomweb = f"http://127.0.0.1:{http_port}/dicom-web"
    assert f"PACS DICOMweb  {dicomweb}" in banner
    study = re.search(r"study UID\s+([0-9.]+)", banner)
    series = re.search(r"series UID\s+([0-9.]+)", banner)
    assert study, banner
    assert series, banner
    accept = {"Accept": "application/dicom+json"}
    studies = urllib3.request("GET", f"{dicomweb}/studies", headers=accept, timeout=10).json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [study[1]]
    assert studies[0]["00100010"]["Value"][0]["Alphabetic"] == "SYNTHETIC^PHANTOM"
    found = urllib3.request(
        "GET", f"{dicomweb}/studies/{study[1]}/series", headers=accept, timeout=10
    ).json()
    assert [s["0020000E"]["Value"][0] for s in found] == [series[1]]
    assert found[0]["00201209"]["Value"][0] == 64  # NumberOfSeriesRelatedInstances
    return study[1], series[1]


def _login_with_a_dev_token(data_dir: Path, address: str) -> str:
    """What the banner tells a developer to do: mint a token, call the server."""
    token = subprocess.run(
        [
            sys.executable, "-m", "pacs_devstack", "token", "--data-dir", str(data_dir),
            "--user", "alice", "--realm-role", "pacs-admin",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()  # fmt: skip
    with grpc.insecure_channel(address) as channel:
        reply = identity_pb2_grpc.IdentityServiceStub(channel).Login(
            identity_pb2.LoginRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    assert reply.user.username == "alice"
    assert reply.platform_admin is True
    return token
