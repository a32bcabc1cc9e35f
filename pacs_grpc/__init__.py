"""PACS Extension Server: annotations and segmentation masks for DICOM studies, over gRPC.

Layers (checked by import-linter in `make check`, see pyproject.toml):
- domain: entities, validation, errors; imports nothing outward;
- services: the use cases, and the ports (protocols) they need; imports the domain only;
- api: servicers, the access gate, interceptors, the error table, health and metrics;
  imports services and domain, never an adapter;
- adapters: PostgreSQL, object storage, the PACS, DICOM, auth, the clock; implement the
  ports; import services (ports) and domain, never api;
- bootstrap: the composition root, the one package that imports them all.
Beside them: config (settings from the environment), edge (the Envoy sidecar's
configuration), cli (`pacs-grpc`), logs, deadlines. Nothing here imports the development stack
(package pacs_devstack), and nothing does I/O at import.
"""
