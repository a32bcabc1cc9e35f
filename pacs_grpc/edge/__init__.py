"""The edge in front of the gRPC server: the Envoy sidecar's configuration."""
