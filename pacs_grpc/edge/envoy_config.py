"""The Envoy sidecar's configuration: deploy/envoy/envoy.yaml with its placeholders filled in.

One renderer serves production and the local stack alike. A Kubernetes init container
runs `pacs-grpc envoy-config --out DIR` (settings from the environment); `pacs-dev run`
and the tests call `write_envoy_config` with explicit ports. Either way the result is a
directory holding envoy.yaml, the descriptor set the transcoder reads and the OpenAPI
document Envoy serves at /api/openapi.json.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import json
import os
import re
import shutil
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pacs_grpc.config import ConfigError

TEMPLATE_NAME = "envoy.yaml"
DESCRIPTOR_NAME = "pacs.binpb"
OPENAPI_NAME = "openapi.json"
MIB = 1024 * 1024
# Where the sidecar container mounts the directory `pacs-grpc envoy-config` writes.
DEFAULT_CONFIG_DIR = PurePosixPath("/etc/envoy")
# The longest Authorization header whose token subject picks a rate-limit bucket: the
# server's default OIDC_MAX_TOKEN_BYTES. A longer one draws from its address's bucket.
MAX_BUCKETED_AUTHORIZATION_CHARS = len("Bearer ") + 16 * 1024

# scheme://host[:port], as a browser sends it in the Origin header.
_ORIGIN = re.compile(r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?$")


# Each setting is one environment variable; errors name the variable.
_ENV_NAMES = {
    "listen_address": "ENVOY_LISTEN_ADDRESS",
    "listen_port": "ENVOY_LISTEN_PORT",
    "admin_address": "ENVOY_ADMIN_ADDRESS",
    "admin_port": "ENVOY_ADMIN_PORT",
    "upstream_address": "ENVOY_UPSTREAM_ADDRESS",
    "upstream_port": "GRPC_PORT",
    "config_dir": "ENVOY_CONFIG_DIR",
    "rate_limit_requests": "ENVOY_RATE_LIMIT_REQUESTS",
    "rate_limit_interval_seconds": "ENVOY_RATE_LIMIT_INTERVAL_SECONDS",
    "rate_limit_burst": "ENVOY_RATE_LIMIT_BURST",
    "anonymous_rate_limit_requests": "ENVOY_ANONYMOUS_RATE_LIMIT_REQUESTS",
    "anonymous_rate_limit_burst": "ENVOY_ANONYMOUS_RATE_LIMIT_BURST",
    "rate_limit_max_clients": "ENVOY_RATE_LIMIT_MAX_CLIENTS",
    "xff_trusted_hops": "ENVOY_XFF_TRUSTED_HOPS",
    "max_request_bytes": "ENVOY_MAX_REQUEST_BYTES",
    "max_response_bytes": "ENVOY_MAX_RESPONSE_BYTES",
    "request_timeout_seconds": "ENVOY_REQUEST_TIMEOUT_SECONDS",
}


class EnvoyConfigError(RuntimeError):
    """The sidecar's configuration cannot be written (a file is missing or too large)."""


@dataclass(frozen=True)
class EnvoySettings:
    """What varies between deployments; everything else is fixed in the template."""

    listen_address: str = "0.0.0.0"  # noqa: S104 - the sidecar serves the pod's clients
    listen_port: int = 8080
    # The admin API can stop Envoy and shows its configuration: loopback only.
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    upstream_address: str = "127.0.0.1"
    upstream_port: int = 50051
    # Where Envoy finds the descriptor set and the OpenAPI document when it runs.
    config_dir: PurePosixPath = DEFAULT_CONFIG_DIR
    # Exact origins (scheme://host[:port]) whose pages may call the API; none by default.
    cors_allowed_origins: tuple[str, ...] = ()
    # A token bucket per caller (token subject): `rate_limit_requests` tokens are added
    # each interval, up to `rate_limit_burst`.
    rate_limit_requests: int = 200
    rate_limit_interval_seconds: int = 1
    rate_limit_burst: int = 400
    # A smaller bucket per client address for calls without a (readable) token: only
    # health, reflection and the OpenAPI document succeed without one.
    anonymous_rate_limit_requests: int = 10
    anonymous_rate_limit_burst: int = 20
    # Buckets held at once (least recently used dropped first).
    rate_limit_max_clients: int = 10_000
    # Proxies in front of Envoy whose x-forwarded-for entries are trusted; 0 when clients
    # connect to Envoy directly (through a Service), so no client can pick its address.
    xff_trusted_hops: int = 0
    # REST bodies are buffered whole for transcoding; gRPC messages are limited by the
    # server (GRPC_MAX_RECEIVE_BYTES / GRPC_MAX_SEND_BYTES). JSON is larger than protobuf.
    max_request_bytes: int = 4 * MIB
    max_response_bytes: int = 32 * MIB
    # Unary calls; WatchAnnotations and PushMasks have no overall limit.
    request_timeout_seconds: int = 60
    openapi_max_bytes: int = 4 * MIB

    def __post_init__(self) -> None:
        for name in ("listen_address", "admin_address", "upstream_address"):
            try:
                ipaddress.ip_address(getattr(self, name))
            except ValueError:
                raise ConfigError(f"{_ENV_NAMES[name]} must be an IP address") from None
        for name in ("listen_port", "admin_port", "upstream_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{_ENV_NAMES[name]} must be between 1 and 65535")
        for name in (
            "rate_limit_requests",
            "rate_limit_interval_seconds",
            "rate_limit_burst",
            "anonymous_rate_limit_requests",
            "anonymous_rate_limit_burst",
            "rate_limit_max_clients",
            "max_request_bytes",
            "max_response_bytes",
            "request_timeout_seconds",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_ENV_NAMES[name]} must be at least 1")
        if not 0 <= self.xff_trusted_hops <= 10:
            raise ConfigError(f"{_ENV_NAMES['xff_trusted_hops']} must be between 0 and 10")
        if not self.config_dir.is_absolute():
            raise ConfigError(f"{_ENV_NAMES['config_dir']} must be an absolute path")
        for origin in self.cors_allowed_origins:
            if not _ORIGIN.match(origin):
                raise ConfigError(
                    f"CORS_ALLOWED_ORIGINS: {origin!r} is not scheme://host[:port] in lower case"
                )

    @property
    def descriptor_path(self) -> PurePosixPath:
        return self.config_dir / DESCRIPTOR_NAME

    @property
    def openapi_path(self) -> PurePosixPath:
        return self.config_dir / OPENAPI_NAME

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EnvoySettings:
        """Settings from environment variables (the README's Edge table), defaults above."""
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        def integer(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            if not raw.isdigit():
                raise ConfigError(f"{name} must be a whole number, got {raw!r}")
            return int(raw)

        origins = tuple(
            o.strip().lower() for o in env.get("CORS_ALLOWED_ORIGINS", "").split(",") if o.strip()
        )
        return cls(
            listen_address=text("ENVOY_LISTEN_ADDRESS", defaults.listen_address),
            listen_port=integer("ENVOY_LISTEN_PORT", defaults.listen_port),
            admin_address=text("ENVOY_ADMIN_ADDRESS", defaults.admin_address),
            admin_port=integer("ENVOY_ADMIN_PORT", defaults.admin_port),
            upstream_address=text("ENVOY_UPSTREAM_ADDRESS", defaults.upstream_address),
            upstream_port=integer("GRPC_PORT", defaults.upstream_port),
            config_dir=PurePosixPath(text("ENVOY_CONFIG_DIR", str(defaults.config_dir))),
            cors_allowed_origins=origins,
            rate_limit_requests=integer("ENVOY_RATE_LIMIT_REQUESTS", defaults.rate_limit_requests),
            rate_limit_interval_seconds=integer(
                "ENVOY_RATE_LIMIT_INTERVAL_SECONDS", defaults.rate_limit_interval_seconds
            ),
            rate_limit_burst=integer("ENVOY_RATE_LIMIT_BURST", defaults.rate_limit_burst),
            anonymous_rate_limit_requests=integer(
                "ENVOY_ANONYMOUS_RATE_LIMIT_REQUESTS", defaults.anonymous_rate_limit_requests
            ),
            anonymous_rate_limit_burst=integer(
                "ENVOY_ANONYMOUS_RATE_LIMIT_BURST", defaults.anonymous_rate_limit_burst
            ),
            rate_limit_max_clients=integer(
                "ENVOY_RATE_LIMIT_MAX_CLIENTS", defaults.rate_limit_max_clients
            ),
            xff_trusted_hops=integer("ENVOY_XFF_TRUSTED_HOPS", defaults.xff_trusted_hops),
            max_request_bytes=integer("ENVOY_MAX_REQUEST_BYTES", defaults.max_request_bytes),
            max_response_bytes=integer("ENVOY_MAX_RESPONSE_BYTES", defaults.max_response_bytes),
            request_timeout_seconds=integer(
                "ENVOY_REQUEST_TIMEOUT_SECONDS", defaults.request_timeout_seconds
            ),
        )


def render_envoy_config(template: str, settings: EnvoySettings) -> str:
    """The template with every placeholder filled in; pure, so tests can read the result."""
    origins = [{"exact": origin} for origin in settings.cors_allowed_origins]
    values = {
        "listen_address": json.dumps(settings.listen_address),
        "listen_port": str(settings.listen_port),
        "admin_address": json.dumps(settings.admin_address),
        "admin_port": str(settings.admin_port),
        "upstream_address": json.dumps(settings.upstream_address),
        "upstream_port": str(settings.upstream_port),
        "descriptor_path": json.dumps(str(settings.descriptor_path)),
        "openapi_path": json.dumps(str(settings.openapi_path)),
        "openapi_max_bytes": str(settings.openapi_max_bytes),
        # JSON is YAML: a flow sequence, empty when no origin is allowed.
        "cors_origins": json.dumps(origins),
        "rate_limit_requests": str(settings.rate_limit_requests),
        "rate_limit_interval": str(settings.rate_limit_interval_seconds),
        "rate_limit_burst": str(settings.rate_limit_burst),
        "anonymous_rate_limit_requests": str(settings.anonymous_rate_limit_requests),
        "anonymous_rate_limit_burst": str(settings.anonymous_rate_limit_burst),
        "rate_limit_max_clients": str(settings.rate_limit_max_clients),
        "max_token_chars": str(MAX_BUCKETED_AUTHORIZATION_CHARS),
        "xff_trusted_hops": str(settings.xff_trusted_hops),
        "max_request_bytes": str(settings.max_request_bytes),
        "max_response_bytes": str(settings.max_response_bytes),
        "request_timeout": str(settings.request_timeout_seconds),
    }
    return string.Template(template).substitute(values)


def default_envoy_dir() -> Path:
    """The template, descriptor and OpenAPI document shipped with this code.

    Inside the wheel (pacs_grpc/_envoy), else the repository's deploy/envoy.
    """
    packaged = importlib.resources.files("pacs_grpc") / "_envoy"
    # Only a real directory can be handed out as a Path; a zipped install has no such thing.
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "deploy" / "envoy"


@dataclass(frozen=True)
class EnvoyAssets:
    """The files a configuration is made from."""

    template: Path
    descriptor: Path
    openapi: Path

    @classmethod
    def shipped(cls) -> EnvoyAssets:
        source = default_envoy_dir()
        return cls(source / TEMPLATE_NAME, source / DESCRIPTOR_NAME, source / OPENAPI_NAME)


def write_envoy_config(
    settings: EnvoySettings, out_dir: Path, assets: EnvoyAssets | None = None
) -> Path:
    """Write envoy.yaml with the descriptor set and OpenAPI document beside it.

    `settings.config_dir` is where Envoy will see `out_dir` (the same directory, or the
    path a volume is mounted at). Returns the path of the written envoy.yaml.
    """
    assets = assets or EnvoyAssets.shipped()
    for path in (assets.template, assets.descriptor, assets.openapi):
        if not path.is_file():
            raise EnvoyConfigError(f"{path} is missing; `make generate` writes it")
    openapi_size = assets.openapi.stat().st_size
    if openapi_size > settings.openapi_max_bytes:
        raise EnvoyConfigError(
            f"{assets.openapi} has {openapi_size} bytes; Envoy serves at most "
            f"{settings.openapi_max_bytes} (openapi_max_bytes)"
        )
    text = render_envoy_config(assets.template.read_text(encoding="utf-8"), settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(assets.descriptor, out_dir / DESCRIPTOR_NAME)
    shutil.copyfile(assets.openapi, out_dir / OPENAPI_NAME)
    target = out_dir / TEMPLATE_NAME
    # Whole or not at all: Envoy must never read a half-written file.
    partial = out_dir / f".{TEMPLATE_NAME}.{os.getpid()}"
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)
    return target
