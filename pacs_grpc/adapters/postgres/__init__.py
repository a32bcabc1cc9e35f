"""PostgreSQL: the connection pool, the migrator and role checks, and the SQL stores.

Each store implements a port of pacs_grpc.services.ports on a psycopg connection inside the
caller's transaction (database.Database). SQL is hand-written and parameterised; dynamic column
lists come from whitelists through psycopg.sql; psycopg errors become domain errors here.

May import: pacs_grpc.services (ports) and pacs_grpc.domain, pacs_grpc.config
(DatabaseSettings), psycopg; never pacs_grpc.api.
"""
