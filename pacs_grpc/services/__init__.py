"""The use cases: one class per group of RPCs; each call writes in one audited transaction
(some read first, unaudited, so that no slow outside call holds a connection).

What lives here: identity, annotations (and watch), mask groups, signed URLs, upload
completion, the streaming push, SEG export and import, the PACS checks, the sweeper; the ports
they need (services/ports); access rules and the audit row (context.py); idempotent creates.

May import: pacs_grpc.domain. Never an adapter, gRPC, psycopg or settings: the composition root
hands every outside part in, so unit tests run them on fakes (tests/fakes).
"""
