"""The viewer page of clients/typescript, served on loopback by the local stack.

`make run` serves what `npm run build` writes to clients/typescript/dist-viewer, with
a config.json telling the page where the API (Envoy) is. With the dev issuer it also
hands the page tokens for named users (POST /dev-token): a convenience that exists
only here, on loopback, for a stack whose signing key anyone on the machine can read
anyway. That endpoint answers only requests addressed to this server by its loopback
name (no DNS rebinding) from this page's own origin (no other site's script).
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pacs_devstack.issuer import DevIssuer

DEV_TOKEN_PATH = "/dev-token"  # noqa: S105 - a URL path, not a secret
DEV_TOKEN_TTL_SECONDS = 3600
_MAX_BODY_BYTES = 4096
_USERNAME = re.compile(r"^[a-z0-9._-]{1,64}$")
# The files `npm run build` writes; nothing else in the folder is served.
_FILES = {
    "/index.html": "text/html; charset=utf-8",
    "/viewer.js": "text/javascript; charset=utf-8",
    "/viewer.js.map": "application/json",
    "/viewer.css": "text/css; charset=utf-8",
}
_NOT_BUILT = (
    "The viewer page is not built. Run `make viewer` (needs Node.js 20 and npm), then reload.\n"
)


def default_site_dir() -> Path:
    """clients/typescript/dist-viewer of this checkout (the page is not in the wheel)."""
    return Path(__file__).resolve().parents[3] / "clients" / "typescript" / "dist-viewer"


@dataclass
class ViewerSettings:
    site_dir: Path
    # Where the page calls the API: the Envoy listener. Set once Envoy is up.
    api_base_url: str = ""
    # Origins the page loads mask images from (presigned GET URLs), for its CSP.
    storage_origins: Sequence[str] = ()
    issuer: DevIssuer | None = None
    admin_role: str = "pacs-admin"
    # Filled in by ViewerServer.start: the Host values this server answers to.
    hosts: frozenset[str] = field(default_factory=frozenset)
    origin: str = ""


class ViewerServer:
    """A static file server for the viewer on a daemon thread, loopback only."""

    def __init__(self, settings: ViewerSettings, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        """scheme://host:port of the page, as a browser sends it in `Origin`."""
        if not self.settings.origin:
            raise RuntimeError("the viewer is not serving")
        return self.settings.origin

    @property
    def origins(self) -> tuple[str, ...]:
        """Both loopback spellings of the page's origin, for CORS lists."""
        port = urlsplit(self.origin).port
        return (f"http://127.0.0.1:{port}", f"http://localhost:{port}")

    @property
    def url(self) -> str:
        return f"{self.origin}/"

    @property
    def built(self) -> bool:
        return (self.settings.site_dir / "index.html").is_file()

    def start(self) -> str:
        """Bind and serve; returns the page's URL."""
        if self._server is not None:
            raise RuntimeError("the viewer is already serving")
        server = ThreadingHTTPServer((self._host, self._port), _handler_for(self.settings))
        server.daemon_threads = True
        port = int(server.server_address[1])
        self.settings.hosts = frozenset({f"{self._host}:{port}", f"localhost:{port}"})
        self.settings.origin = f"http://{self._host}:{port}"
        thread = threading.Thread(
            target=functools.partial(server.serve_forever, poll_interval=0.05),
            name="dev-viewer",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self.url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)


def _handler_for(settings: ViewerSettings) -> type[BaseHTTPRequestHandler]:
    class ViewerHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self._addressed_to_us():
                return
            path = urlsplit(self.path).path
            if path == "/":
                path = "/index.html"
            if path == "/config.json":
                self._send_json(HTTPStatus.OK, _page_config(settings))
                return
            if path == "/favicon.ico":  # browsers ask; a 404 would be a console error
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
                return
            content_type = _FILES.get(path)
            if content_type is None:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
                return
            file = settings.site_dir / path.lstrip("/")
            if not file.is_file():
                body = _NOT_BUILT.encode()
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, body, "text/plain; charset=utf-8")
                return
            self._send(HTTPStatus.OK, file.read_bytes(), content_type)

        def do_POST(self) -> None:
            if not self._addressed_to_us():
                return
            if urlsplit(self.path).path != DEV_TOKEN_PATH or settings.issuer is None:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
                return
            # Browsers send Origin on every POST. A form or script on another site cannot
            # fake it, and its preflight for this JSON request is never answered.
            if self.headers.get("Origin") not in {f"http://{host}" for host in settings.hosts}:
                self._send_json(HTTPStatus.FORBIDDEN, {"error": "only the viewer page may ask"})
                return
            request = self._read_json()
            username = request.get("username") if request is not None else None
            if not isinstance(username, str) or not _USERNAME.match(username):
                message = "username: 1 to 64 of a-z 0-9 . _ -"
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": message})
                return
            admin = request is not None and request.get("admin") is True
            token = settings.issuer.mint(
                username,
                realm_roles=[settings.admin_role] if admin else [],
                ttl_seconds=DEV_TOKEN_TTL_SECONDS,
                client_id="pacs-viewer",
            )
            self._send_json(HTTPStatus.OK, {"token": token, "expires_in": DEV_TOKEN_TTL_SECONDS})

        def _addressed_to_us(self) -> bool:
            # A page on another site whose name was rebound to 127.0.0.1 still sends
            # its own name as Host.
            if self.headers.get("Host") in settings.hosts:
                return True
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host\n", "text/plain")
            return False

        def _read_json(self) -> dict[str, Any] | None:
            if self.headers.get_content_type() != "application/json":
                return None
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                return None
            if not 0 < length <= _MAX_BODY_BYTES:
                return None
            try:
                parsed = json.loads(self.rfile.read(length))
            except ValueError:
                return None
            return parsed if isinstance(parsed, dict) else None

        def _send_json(self, status: HTTPStatus, value: object) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            # A development server: every reload gets the latest build, and tokens
            # are never cached.
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", _content_security_policy(settings))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Keep `make run` output clean; page loads carry no news.
            return

    return ViewerHandler


def _page_config(settings: ViewerSettings) -> dict[str, str]:
    config = {"apiBaseUrl": settings.api_base_url}
    if settings.issuer is not None:
        config["devTokenPath"] = DEV_TOKEN_PATH.lstrip("/")
    return config


def _content_security_policy(settings: ViewerSettings) -> str:
    """The page runs only its own script, calls only the API and loads images from storage."""
    api = _origin_of(settings.api_base_url)
    storage = " ".join(filter(None, (_origin_of(o) for o in settings.storage_origins)))
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"connect-src 'self' {api}; img-src 'self' {storage}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
