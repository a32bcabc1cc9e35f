"""Generated pacs.v1 protobuf messages and gRPC stubs (see buf.gen.yaml)."""
