"""The outside world behind the use cases' ports (pacs_grpc.services.ports).

- postgres: the pool, the migrator, hand-written SQL stores, the event feed and the outbox;
- storage: S3 through the minio SDK (presigning, versions, streaming), its breaker and probe;
- pacs: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and its OAuth client credentials;
- dicom: DICOM Segmentation objects written and read (highdicom), no I/O;
- auth: JWKS cache and bearer-token verifier;
- images.py (PNG label maps), clock.py (the system clock).

May import: pacs_grpc.services (ports) and pacs_grpc.domain, pacs_grpc.config (their settings
types). Never pacs_grpc.api. Database and library errors become domain errors here.
"""
