"""The migrator against a real PostgreSQL: apply, refuse, serialise, verify."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import psycopg
import pytest

from pacs_grpc.adapters.postgres.migrator import (
    ChangedMigrationError,
    Migration,
    MigrationError,
    PendingMigrationsError,
    default_migrations_dir,
    load_migrations,
    migrate,
    verify_schema,
)

REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


async def fetch_all(url: str, query: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(query.encode())
        return await cur.fetchall()


async def table_exists(url: str, table: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("select to_regclass(%s) is not null", (table,))
        row = await cur.fetchone()
        assert row is not None
        return bool(row[0])


# --- load_migrations and default_migrations_dir: no database -----------------------------------


def test_load_sorts_by_version_and_checksums_bytes(tmp_path: Path) -> None:
    write(tmp_path, {"0010_later.sql": "select 10;", "0002_first_step.sql": "select 2;"})
    (tmp_path / "README.md").write_text("not a migration")

    loaded = load_migrations(tmp_path)

    assert [(m.version, m.name) for m in loaded] == [(2, "first_step"), (10, "later")]
    assert loaded[0].sql == "select 2;"
    assert loaded[0].checksum == hashlib.sha256(b"select 2;").hexdigest()
    assert loaded[1].filename == "0010_later.sql"


@pytest.mark.parametrize(
    "filename",
    [
        "1_short.sql",
        "00001_long.sql",
        "0001-dash.sql",
        "0001_Upper.sql",
        "0001_.sql",
        "0001_a b.sql",
    ],
)
def test_load_rejects_malformed_names(tmp_path: Path, filename: str) -> None:
    write(tmp_path, {filename: "select 1;"})
    with pytest.raises(MigrationError, match="malformed migration file name"):
        load_migrations(tmp_path)


def test_load_rejects_version_zero(tmp_path: Path) -> None:
    write(tmp_path, {"0000_zero.sql": "select 1;"})
    with pytest.raises(MigrationError, match="start at 0001"):
        load_migrations(tmp_path)


def test_load_rejects_duplicate_versions(tmp_path: Path) -> None:
    write(tmp_path, {"0001_one.sql": "select 1;", "0001_other.sql": "select 1;"})
    with pytest.raises(MigrationError, match="duplicate migration version 0001"):
        load_migrations(tmp_path)


def test_load_rejects_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="not found"):
        load_migrations(tmp_path / "nope")


def test_default_dir_holds_the_repository_migrations() -> None:
    directory = default_migrations_dir()
    shipped = load_migrations(directory)
    assert shipped[0].filename == "0001_initial.sql"
    assert [m.checksum for m in shipped] == [m.checksum for m in load_migrations(REPO_MIGRATIONS)]


# --- against PostgreSQL ---------------------------------------------------------------------------


async def test_migrate_applies_everything_once(
    empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrations = load_migrations(default_migrations_dir())

    with caplog.at_level(logging.INFO, logger="pacs_grpc.migrate"):
        applied = await migrate(empty_database_url, migrations)

    assert applied == migrations
    rows = await fetch_all(
        empty_database_url, "select version, name, checksum from schema_migrations order by 1"
    )
    assert rows == [(m.version, m.name, m.checksum) for m in migrations]
    assert await table_exists(empty_database_url, "annotation_annotation")
    logged = [r.getMessage() for r in caplog.records if r.name == "pacs_grpc.migrate"]
    assert len(logged) == len(migrations)
    for line, m in zip(logged, migrations, strict=True):
        assert line.startswith(f"applied migration {m.filename} in ")

    assert await migrate(empty_database_url, migrations) == []
    assert len(await fetch_all(empty_database_url, "select 1 from schema_migrations")) == len(
        migrations
    )


async def test_changed_file_is_refused_and_nothing_new_applied(
    empty_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, {"0001_create_a.sql": "create table a (id int);"})
    await migrate(empty_database_url, load_migrations(tmp_path))

    write(
        tmp_path,
        {
            "0001_create_a.sql": "create table a (id bigint);",
            "0002_create_b.sql": "create table b (id int);",
        },
    )
    edited = load_migrations(tmp_path)
    with pytest.raises(ChangedMigrationError, match=r"0001_create_a\.sql"):
        await migrate(empty_database_url, edited)
    with pytest.raises(ChangedMigrationError, match=r"0001_create_a\.sql"):
        await verify_schema(empty_database_url, edited)

    assert not await table_exists(empty_database_url, "b")
    assert await fetch_all(empty_database_url, "select version from schema_migrations") == [(1,)]


async def test_failed_file_rolls_back_alone(empty_database_url: str, tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "0001_good.sql": "create table good (id int);",
            "0002_bad.sql": "create table half (id int);\nselect no_such_function();",
        },
    )

    with pytest.raises(MigrationError, match=r"0002_bad\.sql failed"):
        await migrate(empty_database_url, load_migrations(tmp_path))

    assert await table_exists(empty_database_url, "good")
    assert not await table_exists(empty_database_url, "half")
    assert await fetch_all(empty_database_url, "select version from schema_migrations") == [(1,)]


async def test_never_applied_older_version_is_refused(
    empty_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, {"0001_a.sql": "select 1;", "0003_c.sql": "select 3;"})
    await migrate(empty_database_url, load_migrations(tmp_path))

    write(tmp_path, {"0002_b.sql": "create table b (id int);"})
    with pytest.raises(MigrationError, match=r"0002_b\.sql was never applied"):
        await migrate(empty_database_url, load_migrations(tmp_path))
    assert not await table_exists(empty_database_url, "b")


async def test_concurrent_runs_apply_each_migration_once(empty_database_url: str) -> None:
    migrations = load_migrations(default_migrations_dir())

    results = await asyncio.gather(
        *(migrate(empty_database_url, migrations) for _ in range(3)), return_exceptions=True
    )

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    applied = [m for r in results if not isinstance(r, BaseException) for m in r]
    assert sorted(m.version for m in applied) == [m.version for m in migrations]
    rows = await fetch_all(
        empty_database_url, "select version, count(*) from schema_migrations group by 1 order by 1"
    )
    assert rows == [(m.version, 1) for m in migrations]


async def test_verify_schema_before_and_after_migrate(empty_database_url: str) -> None:
    migrations = load_migrations(default_migrations_dir())

    with pytest.raises(PendingMigrationsError, match=r"0001_initial\.sql"):
        await verify_schema(empty_database_url, migrations)

    await migrate(empty_database_url, migrations)
    await verify_schema(empty_database_url, migrations)


async def test_verify_schema_allows_versions_from_a_newer_release(
    empty_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, {"0001_a.sql": "select 1;", "0002_b.sql": "select 2;"})
    newer: list[Migration] = load_migrations(tmp_path)
    await migrate(empty_database_url, newer)

    await verify_schema(empty_database_url, newer[:1])
