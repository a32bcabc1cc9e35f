"""Object storage (S3: MinIO, AWS, SeaweedFS here) through the minio SDK.

objects.ObjectStore implements pacs_grpc.services.ports.ObjectStorage: presigned POST/PUT/GET,
versioned reads, streamed writes, deletes. breaker.py stops calls to a storage that keeps
failing; s3.py is the health probe.

May import: pacs_grpc.services (ports) and pacs_grpc.domain, pacs_grpc.config
(StorageSettings), minio and urllib3; never pacs_grpc.api.
"""
