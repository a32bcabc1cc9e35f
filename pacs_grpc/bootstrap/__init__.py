"""The composition root: the one place that builds and wires every part.

Nothing here runs at import. Start-up goes in three steps, each usable on its own:

- `production_adapters` (production.py) builds the outside world's parts, an `Adapters`
  (adapters.py), from Settings, doing the start-up I/O: open the pool, check the schema and
  the server's role, fetch the signing keys once. Each resource goes on one exit stack.
- `compose` (wiring.py) builds the use cases, servicers, access gate, interceptors and the
  gRPC server from any Adapters, with no I/O and no port bound: unit tests compose the same
  server on in-memory fakes.
- `create_application` (application.py) joins the two, binds the gRPC port and the metrics
  endpoint, and returns an Application that `serve` runs until SIGTERM or SIGINT;
  Application.stop drains it and closes everything through that same exit stack.

May import: every part of pacs_grpc (it is the one module that does), never the development
stack (pacs_devstack).
"""

from pacs_grpc.bootstrap.adapters import Adapters
from pacs_grpc.bootstrap.application import (
    LIVENESS_SERVICE,
    Application,
    assemble,
    create_application,
    serve,
)
from pacs_grpc.bootstrap.production import StartupError, production_adapters
from pacs_grpc.bootstrap.wiring import SERVICE_NAMES, Wiring, compose
from pacs_grpc.services.ports import LiveEvents

__all__ = [
    "LIVENESS_SERVICE",
    "SERVICE_NAMES",
    "Adapters",
    "Application",
    "LiveEvents",
    "StartupError",
    "Wiring",
    "assemble",
    "compose",
    "create_application",
    "production_adapters",
    "serve",
]
