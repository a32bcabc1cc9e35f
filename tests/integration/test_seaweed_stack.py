"""The local stack's SeaweedFS against a real ``weed mini``: credentials, presigned URLs,
outage and restart, isolation between stacks, and no process left behind."""

from __future__ import annotations

import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psutil
import pytest
import urllib3
from minio import Minio
from minio.error import S3Error

from pacs_devstack.seaweed import SeaweedConfig, SeaweedS3, SeaweedStartError

ACCESS_KEY = "pacs-test-access"
SECRET_KEY = "pacs-test-secret-0123456789"
BUCKET = "pacs-test"


def _config(data_dir: Path, s3_port: int = 0) -> SeaweedConfig:
    return SeaweedConfig(
        data_dir=data_dir,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        bucket=BUCKET,
        s3_port=s3_port,
    )


def _client(endpoint: str, http: urllib3.PoolManager, *, secret: str = SECRET_KEY) -> Minio:
    return Minio(
        urlsplit(endpoint).netloc,
        access_key=ACCESS_KEY,
        secret_key=secret,
        secure=False,
        region="us-east-1",
        http_client=http,
    )


def _weed_processes_for(data_dir: Path) -> list[psutil.Process]:
    """Live weed processes started on data_dir, whoever started them."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(arg == f"-dir={data_dir}" for arg in cmdline):
            found.append(proc)
    return found


def _refuses_connections(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    assert parts.hostname is not None
    assert parts.port is not None
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest.fixture(scope="module")
def http() -> Iterator[urllib3.PoolManager]:
    """One connection pool for the module's clients, closed at the end (no ResourceWarning)."""
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)
    yield pool
    pool.clear()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One server shared by the tests that only read and write through it."""
    server = SeaweedS3(_config(tmp_path_factory.mktemp("seaweed") / "data"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(seaweed: SeaweedS3, http: urllib3.PoolManager) -> Minio:
    return _client(seaweed.endpoint, http)


def _key() -> str:
    return f"studies/{secrets.token_hex(4)}/mask.bin"


def test_bucket_exists_and_objects_round_trip(client: Minio) -> None:
    assert client.bucket_exists(BUCKET)
    key, body = _key(), secrets.token_bytes(3000)

    client.put_object(BUCKET, key, io.BytesIO(body), len(body), content_type="application/x")

    stat = client.stat_object(BUCKET, key)
    assert (stat.size, stat.content_type) == (len(body), "application/x")
    response = client.get_object(BUCKET, key)
    try:
        assert response.read() == body
    finally:
        response.close()
        response.release_conn()


def test_unsigned_requests_get_403(
    seaweed: SeaweedS3, client: Minio, http: urllib3.PoolManager
) -> None:
    key = _key()
    client.put_object(BUCKET, key, io.BytesIO(b"secret"), 6)

    for method, path in [
        ("GET", f"/{BUCKET}/{key}"),
        ("PUT", f"/{BUCKET}/{_key()}"),
        ("GET", f"/{BUCKET}"),
        ("GET", "/"),
    ]:
        response = http.request(
            method, seaweed.endpoint + path, body=b"x" if method == "PUT" else None
        )
        assert response.status == 403, (method, path, response.data)


def test_wrong_secret_or_unknown_key_get_403(seaweed: SeaweedS3, http: urllib3.PoolManager) -> None:
    wrong_secret = _client(seaweed.endpoint, http, secret=SECRET_KEY + "x")
    unknown_key = Minio(
        urlsplit(seaweed.endpoint).netloc,
        access_key="someone-else",
        secret_key=SECRET_KEY,
        secure=False,
        region="us-east-1",
        http_client=http,
    )
    for bad in (wrong_secret, unknown_key):
        with pytest.raises(S3Error) as caught:
            bad.put_object(BUCKET, _key(), io.BytesIO(b"x"), 1)
        assert caught.value.response.status == 403


def _tamper_signature(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tampered = []
    for name, value in query:
        if name == "X-Amz-Signature":
            # One hex digit changed: still well-formed, no longer the signature.
            tampered.append((name, value[:-1] + ("0" if value[-1] != "0" else "1")))
        else:
            tampered.append((name, value))
    changed = urlunsplit(parts._replace(query=urlencode(tampered)))
    assert changed != url
    return changed


def test_presigned_put_works_and_a_tampered_signature_gets_403(
    client: Minio, http: urllib3.PoolManager
) -> None:
    key, body = _key(), b"uploaded by a browser"
    url = client.presigned_put_object(BUCKET, key)

    bad = http.request("PUT", _tamper_signature(url), body=b"forged")
    assert bad.status == 403, bad.data
    with pytest.raises(S3Error) as caught:
        client.stat_object(BUCKET, key)
    assert caught.value.code == "NoSuchKey"

    good = http.request("PUT", url, body=body)
    assert good.status == 200, good.data
    assert client.stat_object(BUCKET, key).size == len(body)


def test_cors_preflight_is_answered(seaweed: SeaweedS3, http: urllib3.PoolManager) -> None:
    response = http.request(
        "OPTIONS",
        f"{seaweed.endpoint}/{BUCKET}/{_key()}",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "PUT",
        },
    )
    assert response.status == 200, response.data
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "http://localhost:5173")


def test_every_listening_port_is_a_chosen_one_on_loopback(seaweed: SeaweedS3) -> None:
    assert seaweed.pid is not None
    listening = [
        c.laddr
        for c in psutil.Process(seaweed.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]

    assert {addr.port for addr in listening} == seaweed.ports.all()
    assert {addr.ip for addr in listening} == {"127.0.0.1"}
    assert len(seaweed.ports.all()) == 10
    # weed's worker dials the admin HTTP port + 10000, whatever the gRPC flag says.
    assert seaweed.ports.admin_grpc == seaweed.ports.admin + 10000


def test_logs_go_to_the_log_file_only(seaweed: SeaweedS3) -> None:
    log = seaweed.log_path.read_text(errors="replace")
    assert "Volume Size Limit is 64 MB" in log
    # glog writes /tmp/weed.<host>.<user>.log.<level>.<date>.<pid> unless told otherwise.
    assert not list(Path("/tmp").glob(f"weed.*.{seaweed.pid}"))


@pytest.mark.slow
def test_two_instances_run_side_by_side(
    seaweed: SeaweedS3, client: Minio, http: urllib3.PoolManager, tmp_path: Path
) -> None:
    with SeaweedS3(_config(tmp_path / "other")) as other:
        assert other.endpoint != seaweed.endpoint
        assert not other.ports.all() & seaweed.ports.all()
        other_client = _client(other.endpoint, http)
        key = _key()
        other_client.put_object(BUCKET, key, io.BytesIO(b"only here"), 9)

        assert other_client.stat_object(BUCKET, key).size == 9
        with pytest.raises(S3Error) as caught:
            client.stat_object(BUCKET, key)
        assert caught.value.code == "NoSuchKey"
    assert client.bucket_exists(BUCKET)


@pytest.mark.slow
def test_kill_refuses_connections_and_restart_comes_back_at_the_same_endpoint(
    tmp_path: Path, http: urllib3.PoolManager
) -> None:
    server = SeaweedS3(_config(tmp_path / "data"))
    server.start()
    try:
        endpoint, ports = server.endpoint, server.ports
        key = _key()
        _client(endpoint, http).put_object(BUCKET, key, io.BytesIO(b"survives"), 8)

        server.kill()
        assert not server.running
        assert _refuses_connections(endpoint)

        # weed re-applies options saved in mini.options whose flags are at their
        # default value; a stale file must not open the debug or WebDAV ports.
        with (server.config.data_dir / "mini.options").open("a") as options:
            options.write("debug=true\nwebdav=true\n")

        server.restart()
        assert (server.endpoint, server.ports) == (endpoint, ports)
        assert server.pid is not None
        listening = {
            c.laddr.port
            for c in psutil.Process(server.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == ports.all()
        assert _client(endpoint, http).stat_object(BUCKET, key).size == 8
    finally:
        server.stop()


@pytest.mark.slow
def test_stop_leaves_no_weed_process_and_is_idempotent(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = SeaweedS3(_config(data_dir))
    server.start()
    pid = server.pid
    assert pid is not None
    assert [p.pid for p in _weed_processes_for(data_dir)] == [pid]
    # Its own session and group: a Ctrl-C in our terminal does not reach it.
    assert os.getsid(pid) == os.getpgid(pid) == pid
    assert os.getpgid(pid) != os.getpgid(0)

    server.stop()
    server.stop()

    assert not server.running
    assert server.pid is None
    assert not psutil.pid_exists(pid)
    assert _weed_processes_for(data_dir) == []
    assert not list(Path("/tmp").glob(f"seaweedfs-*-grpc-{server.ports.s3_grpc}.sock"))


def test_a_port_clash_fails_with_one_clear_line_and_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # Bound, not listening: weed cannot bind it, and our probes are refused at once.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        server = SeaweedS3(_config(data_dir, s3_port=taken.getsockname()[1]))
        with pytest.raises(SeaweedStartError) as caught:
            server.start(timeout=20)

    first_line, _, tail = str(caught.value).partition("\n")
    assert "exited with code" in first_line
    assert str(server.log_path) in first_line
    assert "not available" in tail
    assert not server.running
    assert _weed_processes_for(data_dir) == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_weed_stops_when_its_parent_dies_without_stopping_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    parent_code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from pacs_devstack.seaweed import SeaweedConfig, SeaweedS3
        server = SeaweedS3(SeaweedConfig(
            data_dir=Path({str(data_dir)!r}), access_key="k" * 8, secret_key="s" * 16,
            bucket="b-orphan", s3_port=0))
        server.start()
        print(server.pid, server.ports.s3_grpc, server.ports.admin_grpc, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        weed_pid, *grpc_ports = map(int, parent.stdout.readline().split())
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        weed = psutil.Process(weed_pid)
        weed.wait(timeout=15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + 5
    while _weed_processes_for(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _weed_processes_for(data_dir) == []
    # Nobody was left to tidy weed's /tmp sockets; this test made them, it removes them.
    for port in grpc_ports:
        for leftover in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
            leftover.unlink(missing_ok=True)
