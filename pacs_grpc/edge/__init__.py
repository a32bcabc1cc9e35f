"""The edge in front of the gRPC server: the Envoy sidecar's configuration.

May import: pacs_grpc.config and the generated pacs.v1 descriptors; never the use cases or
adapters (the sidecar is configured, not wired).
"""
