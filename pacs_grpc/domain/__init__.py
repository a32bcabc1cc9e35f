"""Entities, value types, validation and errors. Imports nothing outside the domain
(import-linter checks it): no settings, gRPC, database, storage or DICOM library."""
