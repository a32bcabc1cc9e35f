"""The local stack: PostgreSQL, S3, a PACS, migrations, the server and Envoy, in that order.

`pacs-dev run` (and so `make run`) and the test suite start it through this
same code. DATABASE_URL and S3_ENDPOINT, when set, replace the embedded
PostgreSQL and SeaweedFS; MIGRATION_DATABASE_URL then names the schema's owner.
PACS_DICOMWEB_URL, when set, is the PACS; otherwise the stack starts Debian's
Orthanc when asked to (`make run` asks when it is installed, the tests rarely).
As in production, the migrations run as the owner and the server as a member
of pacs_app, so every test that calls the server proves that role's grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pacs_devstack.envoy import EnvoyProcess
from pacs_devstack.issuer import DEV_AUDIENCE, DEV_ISSUER, DevIssuer
from pacs_devstack.orthanc import INSTALL_HINT, Orthanc, orthanc_available, port_in_use
from pacs_devstack.ports import free_port, free_ports
from pacs_devstack.postgres import EmbeddedPostgres, PostgresConfig
from pacs_devstack.seaweed import SeaweedConfig, SeaweedS3
from pacs_devstack.server import ServerProcess
from pacs_devstack.viewer import ViewerServer, ViewerSettings, default_site_dir
from pacs_grpc.adapters.postgres import migrator
from pacs_grpc.adapters.postgres.roles import APPLICATION_ROLE
from pacs_grpc.edge.envoy_config import EnvoyAssets, EnvoySettings

# Local-only credentials for the embedded SeaweedFS, which listens on loopback.
DEV_S3_ACCESS_KEY = "pacs-dev"
DEV_S3_SECRET_KEY = "pacs-dev-secret"  # noqa: S105 - loopback development store
DEV_DATABASE = "pacs"
# The embedded PostgreSQL's login role for the server (trust auth on loopback, no password).
DEV_SERVER_ROLE = "pacs_server"


@dataclass
class StackConfig:
    data_dir: Path
    grpc_port: int = 0
    postgres_port: int = 0
    s3_port: int = 0
    issuer_port: int = 0
    http_port: int = 0  # Envoy: REST, gRPC-web and gRPC
    envoy_admin_port: int = 0
    viewer_port: int = 0  # the viewer page (clients/typescript), when started
    # Start Orthanc as the PACS (unless PACS_DICOMWEB_URL names one); its ports, 0 = free.
    pacs: bool = False
    pacs_http_port: int = 0
    pacs_dicom_port: int = 0
    # Origins whose pages may read mask images from the embedded storage; empty: any.
    storage_cors_origins: tuple[str, ...] = ()
    # Tests trade crash safety for speed; a developer's data stays durable.
    durable: bool = True
    bucket: str = "pacs-masks"
    # Values from the caller's environment (DATABASE_URL, S3_*) win over the
    # embedded servers, and anything else here is passed to the server as is.
    environment: Mapping[str, str] = field(default_factory=dict)


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.postgres: EmbeddedPostgres | None = None
        self.s3: SeaweedS3 | None = None
        self.server: ServerProcess | None = None
        self.envoy: EnvoyProcess | None = None
        self.viewer: ViewerServer | None = None
        self.issuer: DevIssuer | None = None
        self.orthanc: Orthanc | None = None
        self.oidc: dict[str, str] = {}
        # The PACS's DICOMweb root the server is linked to; empty: no PACS.
        self.pacs_url = ""
        # The schema owner's URL: migrations, and tests that look at or arrange data directly.
        self.database_url = ""
        # The server's DATABASE_URL: a member of pacs_app, which owns nothing.
        self.server_database_url = ""
        self.s3_endpoint = ""
        self.s3_access_key = ""
        self.s3_secret_key = ""

    def start_dependencies(self) -> None:
        env = self.config.environment
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        if env.get("DATABASE_URL"):
            self.server_database_url = env["DATABASE_URL"]
            self.database_url = env.get("MIGRATION_DATABASE_URL") or env["DATABASE_URL"]
        else:
            self.postgres = EmbeddedPostgres(
                PostgresConfig(
                    data_dir=self.config.data_dir / "postgres",
                    port=self.config.postgres_port,
                    durable=self.config.durable,
                )
            )
            self.postgres.start()
            self.database_url = self.postgres.create_database(DEV_DATABASE)
            self.postgres.create_login_role(DEV_SERVER_ROLE, APPLICATION_ROLE)
            self.server_database_url = self.postgres.url(DEV_DATABASE, user=DEV_SERVER_ROLE)
        if env.get("S3_ENDPOINT"):
            self.s3_endpoint = env["S3_ENDPOINT"]
            self.s3_access_key = env.get("S3_ACCESS_KEY", "")
            self.s3_secret_key = env.get("S3_SECRET_KEY", "")
        else:
            self.s3 = SeaweedS3(
                SeaweedConfig(
                    data_dir=self.config.data_dir / "s3",
                    access_key=DEV_S3_ACCESS_KEY,
                    secret_key=DEV_S3_SECRET_KEY,
                    bucket=env.get("S3_BUCKET") or self.config.bucket,
                    s3_port=self.config.s3_port,
                    allowed_origins=",".join(self.config.storage_cors_origins) or "*",
                )
            )
            self.s3.start()
            self.s3_endpoint = self.s3.endpoint
            self.s3_access_key, self.s3_secret_key = DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY
        if env.get("PACS_DICOMWEB_URL"):
            self.pacs_url = env["PACS_DICOMWEB_URL"]
        elif self.config.pacs:
            self.orthanc = Orthanc(
                self.config.data_dir / "orthanc",
                http_port=self.config.pacs_http_port,
                dicom_port=self.config.pacs_dicom_port,
            )
            self.orthanc.start()
            self.pacs_url = self.orthanc.dicomweb_url

        if env.get("OIDC_JWKS_URL"):
            # A real Keycloak realm: the caller configured OIDC_* already.
            self.oidc = {}
        else:
            self.issuer = DevIssuer(self.config.data_dir / "issuer")
            jwks_url = self.issuer.serve(port=self.config.issuer_port)
            self.oidc = {
                "OIDC_ISSUER": DEV_ISSUER,
                "OIDC_AUDIENCE": DEV_AUDIENCE,
                "OIDC_JWKS_URL": jwks_url,
                # `serve` refuses the dev issuer unless told this is development.
                "PACS_DEV_MODE": "true",
            }

    def migrate(self) -> list[migrator.Migration]:
        migrations = migrator.load_migrations(migrator.default_migrations_dir())
        return asyncio.run(migrator.migrate(self.database_url, migrations))

    def server_environment(self, grpc_port: int) -> dict[str, str]:
        env = {**os.environ, **self.config.environment, **self.oidc}
        # The owner's credentials stay with the migrations.
        env.pop("MIGRATION_DATABASE_URL", None)
        if self.pacs_url:
            env["PACS_DICOMWEB_URL"] = self.pacs_url
            # With a PACS, writes are checked against it unless the caller says otherwise.
            env.setdefault("PACS_VALIDATE", "enforce")
        else:
            # A PACS in the caller's shell is not this stack's (its environment is explicit).
            env.pop("PACS_DICOMWEB_URL", None)
        env.update(
            DATABASE_URL=self.server_database_url,
            S3_ENDPOINT=self.s3_endpoint,
            S3_ACCESS_KEY=self.s3_access_key,
            S3_SECRET_KEY=self.s3_secret_key,
            S3_BUCKET=env.get("S3_BUCKET") or self.config.bucket,
            GRPC_PORT=str(grpc_port),
            GRPC_HOST="127.0.0.1",
        )
        return env

    def start_server(self, *, log_path: Path | None = None, timeout: float = 30.0) -> ServerProcess:
        port = self.config.grpc_port or free_port()
        self.server = ServerProcess(self.server_environment(port), port, log_path=log_path)
        self.server.start(timeout)
        return self.server

    def edge_settings(
        self,
        *,
        cors_allowed_origins: tuple[str, ...] = (),
        base: EnvoySettings | None = None,
        http_port: int = 0,
        admin_port: int = 0,
    ) -> EnvoySettings:
        """Envoy's settings for this stack: loopback, free ports unless given, this server.

        `base` supplies everything else (rate and body limits); by default it comes from
        the ENVOY_* variables of the stack's environment, as in production.
        """
        if self.server is None:
            raise RuntimeError("start the server before Envoy")
        if not (http_port and admin_port):
            spare = iter(free_ports(2))
            http_port, admin_port = http_port or next(spare), admin_port or next(spare)
        return dataclasses.replace(
            base or EnvoySettings.from_env(self.config.environment),
            listen_address="127.0.0.1",
            listen_port=http_port,
            admin_address="127.0.0.1",
            admin_port=admin_port,
            upstream_address="127.0.0.1",
            upstream_port=self.server.port,
            cors_allowed_origins=cors_allowed_origins,
        )

    def start_envoy(
        self,
        *,
        cors_allowed_origins: tuple[str, ...] = (),
        assets: EnvoyAssets | None = None,
        log_path: Path | None = None,
        timeout: float = 30.0,
    ) -> EnvoyProcess:
        """Envoy in front of the running server; returns once a request would succeed."""
        settings = self.edge_settings(
            cors_allowed_origins=cors_allowed_origins,
            http_port=self.config.http_port,
            admin_port=self.config.envoy_admin_port,
        )
        envoy = EnvoyProcess(
            settings, self.config.data_dir / "envoy", assets=assets, log_path=log_path
        )
        envoy.start(timeout=timeout)
        self.envoy = envoy
        return envoy

    def stop_envoy(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
            self.envoy = None

    def start_viewer(self, *, api_base_url: str = "", site_dir: Path | None = None) -> ViewerServer:
        """The viewer page on loopback, calling `api_base_url` (default: this stack's Envoy)."""
        env = self.config.environment
        settings = ViewerSettings(
            site_dir=site_dir or default_site_dir(),
            api_base_url=api_base_url or (self.envoy.url if self.envoy else ""),
            storage_origins=(env.get("S3_PUBLIC_ENDPOINT") or self.s3_endpoint,),
            issuer=self.issuer,
            admin_role=env.get("PLATFORM_ADMIN_ROLE") or "pacs-admin",
        )
        viewer = ViewerServer(settings, port=self.config.viewer_port)
        viewer.start()
        self.viewer = viewer
        return viewer

    def stop_viewer(self) -> None:
        if self.viewer is not None:
            self.viewer.stop()
            self.viewer = None

    def stop(self) -> None:
        """Stop everything this stack started, last started first."""
        self.stop_viewer()
        # The edge first, so no new request reaches a server that is going away.
        self.stop_envoy()
        if self.server is not None:
            with contextlib.suppress(RuntimeError):
                self.server.terminate()
            self.server = None
        if self.issuer is not None:
            self.issuer.stop()
        if self.orthanc is not None:
            self.orthanc.stop()
            self.orthanc = None
        if self.s3 is not None:
            self.s3.stop()
        if self.postgres is not None:
            self.postgres.stop()


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "")
    return int(value) if value.isdigit() else default


def _default_port_or_free(env: Mapping[str, str], name: str, default: int) -> int:
    """The port `name` gives; else `default`, or a free port if something holds it.

    Debian's orthanc package starts a system service on 8042/4242 where systemd runs;
    the stack's own Orthanc then moves aside rather than fail. A port given explicitly
    is kept, so a clash there is an error.
    """
    if env.get(name, "").isdigit():
        return int(env[name])
    return free_port() if port_in_use(default) else default


@dataclass(frozen=True)
class SampleSeries:
    """The synthetic CT `make run` stores in its own PACS on first start."""

    study_uid: str
    series_uid: str
    instances: int


SAMPLE_MARKER = "sample-series.json"


def ensure_sample_series(orthanc: Orthanc, uid_root: str | None = None) -> SampleSeries:
    """Store the sample series once per data directory; later starts read what was stored.

    The marker lives with Orthanc's data, so removing that removes both together.
    """
    from pacs_devstack.sample_ct import store_series, synthetic_ct

    marker = orthanc.data_dir / SAMPLE_MARKER
    if marker.is_file():
        return SampleSeries(**json.loads(marker.read_text()))
    datasets = synthetic_ct(uid_root=uid_root)
    store_series(orthanc.dicomweb_url, datasets)
    sample = SampleSeries(
        study_uid=str(datasets[0].StudyInstanceUID),
        series_uid=str(datasets[0].SeriesInstanceUID),
        instances=len(datasets),
    )
    marker.write_text(json.dumps(dataclasses.asdict(sample)) + "\n")
    return sample


def run_dev_stack(data_dir: str) -> int:
    """Start the stack in the foreground until Ctrl-C; what `make run` runs."""
    env = dict(os.environ)
    http_port = _port(env, "PACS_DEV_HTTP_PORT", 8080)
    viewer_port = _port(env, "PACS_DEV_VIEWER_PORT", 8081) or free_port()
    # The stack's own pages (served at its HTTP origin) may call it unless told otherwise,
    # and so may the viewer page; those pages may also load mask images from storage.
    page_origins = (
        *(
            EnvoySettings.from_env(env).cors_allowed_origins
            or (f"http://localhost:{http_port}", f"http://127.0.0.1:{http_port}")
        ),
        f"http://127.0.0.1:{viewer_port}",
        f"http://localhost:{viewer_port}",
    )
    stack = LocalStack(
        StackConfig(
            data_dir=Path(data_dir).resolve(),
            grpc_port=_port(env, "GRPC_PORT", 50051),
            postgres_port=_port(env, "PACS_DEV_POSTGRES_PORT", 54329),
            s3_port=_port(env, "PACS_DEV_S3_PORT", 8333),
            issuer_port=_port(env, "PACS_DEV_ISSUER_PORT", 8099),
            http_port=http_port,
            envoy_admin_port=_port(env, "PACS_DEV_ENVOY_ADMIN_PORT", 0),
            viewer_port=viewer_port,
            storage_cors_origins=page_origins,
            environment=env,
            # A PACS of the developer's (PACS_DICOMWEB_URL) wins over the local Orthanc.
            pacs=orthanc_available() and not env.get("PACS_DICOMWEB_URL"),
            pacs_http_port=_default_port_or_free(env, "PACS_DEV_ORTHANC_HTTP_PORT", 8042),
            pacs_dicom_port=_default_port_or_free(env, "PACS_DEV_ORTHANC_DICOM_PORT", 4242),
        )
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        pacs = " and the PACS (Orthanc)" if stack.config.pacs else ""
        print(f"starting PostgreSQL, object storage{pacs} ...", flush=True)
        stack.start_dependencies()
        sample = _sample_series(stack, env)
        applied = stack.migrate()
        print(f"migrations: {len(applied)} applied", flush=True)
        server = stack.start_server()
        envoy = stack.start_envoy(cors_allowed_origins=page_origins)
        viewer = stack.start_viewer()
        _print_endpoints(stack, server, envoy, viewer, sample)
        children = {"server": server.process, "envoy": envoy.process}
        while not stop.is_set() and all(c.poll() is None for c in children.values()):
            stop.wait(0.5)
        for name, child in children.items():
            if child.poll() is not None:
                print(f"{name} exited with code {child.returncode}", flush=True)
                return 1
        print("\nstopping ...", flush=True)
        return 0
    finally:
        stack.stop()


def _sample_series(stack: LocalStack, env: Mapping[str, str]) -> SampleSeries | None:
    """The sample series in the stack's own Orthanc; never written to a PACS of the caller's."""
    if stack.orthanc is None:
        return None
    if not (stack.orthanc.data_dir / SAMPLE_MARKER).is_file():
        print("storing a synthetic CT series in the local PACS (first start) ...", flush=True)
    try:
        return ensure_sample_series(stack.orthanc, env.get("DICOM_UID_ROOT") or None)
    except Exception as exc:  # noqa: BLE001 - a convenience; the stack runs without it
        print(f"could not store the sample CT series: {type(exc).__name__}: {exc}", flush=True)
        return None


def pacs_banner(pacs_url: str, own: bool, sample: SampleSeries | None) -> str:
    """The banner's PACS lines: where DICOMweb is, the sample study, or how to add a PACS."""
    if not pacs_url:
        return (
            "  PACS           none: writes are not checked against a PACS. Add a local one\n"
            f"                 with `{INSTALL_HINT}`, or set PACS_DICOMWEB_URL\n"
        )
    lines = f"  PACS DICOMweb  {pacs_url}   ({'local Orthanc' if own else 'PACS_DICOMWEB_URL'})\n"
    if sample is not None:
        lines += (
            f"  sample CT      {sample.instances} synthetic slices, patient SYNTHETIC^PHANTOM\n"
            f"    study UID    {sample.study_uid}\n"
            f"    series UID   {sample.series_uid}\n"
        )
    return lines


def _print_endpoints(
    stack: LocalStack,
    server: ServerProcess,
    envoy: EnvoyProcess,
    viewer: ViewerServer,
    sample: SampleSeries | None = None,
) -> None:
    database = (
        f"{stack.server_database_url} (server), {stack.database_url} (migrations)"
        if stack.postgres
        else "DATABASE_URL (external)"
    )
    origins = ", ".join(envoy.settings.cors_allowed_origins) or "none"
    print(
        "\nPACS Extension Server is up.\n"
        f"  REST           {envoy.url}/api/...   (e.g. {envoy.url}/api/users/me)\n"
        f"  gRPC-web       {envoy.url}   (native gRPC too: {envoy.grpc_address})\n"
        f"  OpenAPI        {envoy.url}/api/openapi.json\n"
        f"  viewer page    {viewer.url}{_viewer_note(viewer)}\n"
        f"  CORS origins   {origins}\n"
        f"  Envoy admin    {envoy.admin_url}   (log {envoy.log_path})\n"
        f"  gRPC           {server.address}   (reflection on: grpcurl -plaintext "
        f"{server.address} list)\n"
        f"  health         grpc.health.v1 on {server.address}\n"
        f"  PostgreSQL     {database}\n"
        f"  S3             {stack.s3_endpoint}  bucket {stack.config.bucket}\n"
        f"{pacs_banner(stack.pacs_url, stack.orthanc is not None, sample)}"
        f"{_token_help(stack, server, envoy)}"
        "Press Ctrl-C to stop everything.\n",
        flush=True,
    )


def _token_help(stack: LocalStack, server: ServerProcess, envoy: EnvoyProcess) -> str:
    if stack.issuer is None:
        return "  tokens         from your Keycloak realm (OIDC_* settings)\n"
    data_dir = stack.config.data_dir
    return (
        f"  dev issuer     {stack.oidc['OIDC_JWKS_URL']}\n"
        "Dev token (a platform administrator; drop --realm-role for a plain user):\n"
        f"  TOKEN=$(.venv/bin/pacs-dev token --data-dir {data_dir} --user alice"
        " --realm-role pacs-admin)\n"
        f'  grpcurl -plaintext -H "authorization: Bearer $TOKEN" {server.address}'
        " pacs.v1.IdentityService/Login\n"
        f'  curl -X POST -H "authorization: Bearer $TOKEN" -d {{}} {envoy.url}/api/auth/login\n'
    )


def _viewer_note(viewer: ViewerServer) -> str:
    return "" if viewer.built else "   (not built: run `make viewer`, needs Node.js and npm)"
