"""The local development stack (`pacs-dev`): never part of the server's wheel or image.

It starts the production server (`pacs_grpc`) beside embedded PostgreSQL, SeaweedFS, Envoy,
Orthanc and a development token issuer; it depends on pacs_grpc, never the other way round.
"""
