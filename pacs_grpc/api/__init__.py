"""The gRPC edge: servicers (proto in, use case, proto out), the access gate (token, user,
rate limits, refusals' audit rows), interceptors, the one error table from domain errors to
gRPC statuses, health and metrics.

May import: pacs_grpc.services and pacs_grpc.domain, the generated pacs.v1 code, grpcio.
Never an adapter: those come in through the composition root (pacs_grpc.bootstrap).
"""
