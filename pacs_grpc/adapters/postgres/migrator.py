"""Apply the numbered SQL files in ``migrations/`` to a PostgreSQL database.

Each file ``NNNN_snake_name.sql`` runs once, in its own transaction together with its row in
``schema_migrations``, so a failed file leaves nothing behind and is retried by the next run.
Applied files are immutable: their SHA-256 is recorded and a changed file is refused, because the
database would otherwise silently differ from what the code in the repository describes.

Replicas may all run ``migrate`` at start-up: a session-level advisory lock serialises them, and the
ones that wait find nothing left to do. The lock is session-level, so connect directly or through a
session-pooling proxy, never through PgBouncer in transaction mode.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

__all__ = [
    "ChangedMigrationError",
    "Migration",
    "MigrationError",
    "PendingMigrationsError",
    "default_migrations_dir",
    "load_migrations",
    "migrate",
    "verify_schema",
]

logger = logging.getLogger("pacs_grpc.migrate")

# Key of the pg_advisory_lock held for a whole run: the bytes of "pacsmigr". Advisory locks are
# scoped to the current database, so databases on one server do not block each other.
ADVISORY_LOCK_KEY = 0x7061_6373_6D69_6772

_FILENAME = re.compile(r"^(?P<version>[0-9]{4})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.sql$")

_CREATE_TABLE = """
create table if not exists schema_migrations (
    version     integer primary key,
    name        text not null,
    checksum    text not null,
    applied_at  timestamptz not null default now()
)
"""


class MigrationError(Exception):
    """A migration cannot be loaded or applied; the message is one line for an operator."""


class ChangedMigrationError(MigrationError):
    """An applied migration file no longer has the checksum recorded when it was applied."""


class PendingMigrationsError(MigrationError):
    """The database lacks migrations that this code needs (raised by ``verify_schema``)."""


@dataclass(frozen=True)
class Migration:
    """One NNNN_snake_name.sql file. `checksum` is the SHA-256 of its exact bytes: recorded when
    applied, and a later run refuses a file whose bytes changed (ChangedMigrationError).
    """

    version: int
    name: str
    sql: str
    checksum: str  # sha256 hex of the file's bytes

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def load_migrations(directory: Path) -> list[Migration]:
    """Read every ``*.sql`` file in ``directory``, sorted by version.

    Other files (a README) are ignored. A ``.sql`` file whose name is not ``NNNN_snake_name.sql``,
    version 0000, two files with one version, or a file that is not UTF-8 raise ``MigrationError``.
    """
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    by_version: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILENAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"malformed migration file name {path.name!r}: expected NNNN_snake_name.sql"
            )
        version = int(match["version"])
        if version == 0:
            raise MigrationError(f"migration {path.name!r}: versions start at 0001")
        if version in by_version:
            raise MigrationError(
                f"duplicate migration version {version:04d}: "
                f"{by_version[version].filename} and {path.name}"
            )
        data = path.read_bytes()
        try:
            sql = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"migration {path.name!r} is not valid UTF-8") from exc
        by_version[version] = Migration(
            version=version, name=match["name"], sql=sql, checksum=hashlib.sha256(data).hexdigest()
        )
    return [by_version[v] for v in sorted(by_version)]


def default_migrations_dir() -> Path:
    """The migrations shipped with this code: inside the wheel, else the repository's folder."""
    packaged = importlib.resources.files("pacs_grpc") / "_migrations"
    # Only a real directory can be handed out as a Path; a zipped install has no such thing.
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "migrations"


async def migrate(conninfo: str, migrations: Sequence[Migration]) -> list[Migration]:
    """Apply the migrations not yet in ``schema_migrations``; return those applied by this call.

    Raises ``ChangedMigrationError`` before applying anything if an applied file has changed;
    ``MigrationError`` if a file is older than the newest applied version but was never applied
    (it was written against a schema that has since moved on), or if a file fails, in which case
    the files before it stay applied and that file left nothing behind.
    """
    ordered = _check_sorted(migrations)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        # Held until the connection closes, which also releases it if this process dies.
        await conn.execute("select pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        await conn.execute(_CREATE_TABLE)
        applied = await _applied_checksums(conn)
        _check_unchanged(ordered, applied)
        pending = [m for m in ordered if m.version not in applied]
        newest = max(applied, default=0)
        for m in pending:
            if m.version < newest:
                raise MigrationError(
                    f"migration {m.filename} was never applied but version {newest:04d} was: "
                    "add a new version instead of inserting an old one"
                )
        for m in pending:
            started = time.perf_counter()
            try:
                async with conn.transaction():
                    # Without parameters psycopg sends the file as one simple query: several
                    # statements are fine and '%' needs no escaping.
                    await conn.execute(m.sql.encode("utf-8"))
                    await conn.execute(
                        "insert into schema_migrations (version, name, checksum)"
                        " values (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
            except psycopg.DatabaseError as exc:
                raise MigrationError(
                    f"migration {m.filename} failed and was rolled back: "
                    f"{exc.diag.message_primary or type(exc).__name__}"
                ) from exc
            logger.info(
                "applied migration %s in %.0f ms",
                m.filename,
                (time.perf_counter() - started) * 1000,
            )
    return pending


async def verify_schema(conninfo: str, migrations: Sequence[Migration]) -> None:
    """Check, without changing anything, that every migration is applied and unchanged.

    Versions applied in the database but unknown here are accepted: a newer release may have
    migrated first, and migrations are written to keep the previous release working.
    """
    ordered = _check_sorted(migrations)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute("select to_regclass('schema_migrations') is not null")
        row = await cur.fetchone()
        applied = await _applied_checksums(conn) if row is not None and row[0] else {}
    _check_unchanged(ordered, applied)
    missing = [m.filename for m in ordered if m.version not in applied]
    if missing:
        raise PendingMigrationsError(
            f"database schema is behind: {len(missing)} migration(s) not applied "
            f"({', '.join(missing)}); run the migrate command first"
        )


def _check_sorted(migrations: Sequence[Migration]) -> list[Migration]:
    ordered = sorted(migrations, key=lambda m: m.version)
    versions = [m.version for m in ordered]
    if len(set(versions)) != len(versions):
        raise MigrationError("duplicate migration versions given")
    return ordered


async def _applied_checksums(conn: psycopg.AsyncConnection[TupleRow]) -> dict[int, str]:
    cur = await conn.execute("select version, checksum from schema_migrations")
    return {int(version): str(checksum) for version, checksum in await cur.fetchall()}


def _check_unchanged(migrations: Sequence[Migration], applied: dict[int, str]) -> None:
    for m in migrations:
        recorded = applied.get(m.version)
        if recorded is not None and recorded != m.checksum:
            raise ChangedMigrationError(
                f"migration {m.filename} was changed after it was applied "
                f"(recorded sha256 {recorded[:12]}…, file {m.checksum[:12]}…); "
                "restore it and put the change in a new migration"
            )
