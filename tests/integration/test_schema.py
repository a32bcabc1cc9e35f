"""The constraints in migrations/ keep bad data out, whatever the application forgets to check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import TupleRow

Conn = psycopg.AsyncConnection[TupleRow]

VALID_UID = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class Seed:
    user_id: int
    project_id: int
    annotation_id: int
    group_id: int


@pytest.fixture
async def conn(migrated_database_url: str) -> AsyncIterator[Conn]:
    # Autocommit: a refused statement does not poison the statements after it.
    async with await psycopg.AsyncConnection.connect(
        migrated_database_url, autocommit=True
    ) as connection:
        yield connection


async def scalar(conn: Conn, query: str, params: tuple[Any, ...] | None = None) -> Any:
    cur = await conn.execute(query.encode(), params)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def insert_annotation(conn: Conn, seed_user: int, seed_project: int, **columns: Any) -> int:
    values: dict[str, Any] = {
        "user_id": seed_user,
        "project_id": seed_project,
        "study_uid": VALID_UID,
        "annotation_type": "length",
        "annotation_data": '{"points": [[0, 0], [3, 4]]}',
    } | columns
    names = ", ".join(values)
    placeholders = ", ".join(["%s"] * len(values))
    return int(
        await scalar(
            conn,
            f"insert into annotation_annotation ({names}) values ({placeholders}) returning id",
            tuple(values.values()),
        )
    )


@pytest.fixture
async def seed(conn: Conn) -> Seed:
    user_id = await scalar(
        conn,
        "insert into security_user (keycloak_id, username, email)"
        " values (gen_random_uuid(), 'alice', 'Alice@Example.org') returning id",
    )
    project_id = await scalar(
        conn, "insert into security_project (name) values ('chest-ct') returning id"
    )
    annotation_id = await insert_annotation(conn, user_id, project_id)
    group_id = await scalar(
        conn,
        "insert into annotation_mask_group (annotation_id, slice_count, created_by)"
        " values (%s, 3, %s) returning id",
        (annotation_id, user_id),
    )
    return Seed(user_id, project_id, annotation_id, group_id)


async def insert_mask(conn: Conn, group_id: int, slice_index: int, **columns: Any) -> int:
    values: dict[str, Any] = {
        "mask_group_id": group_id,
        "slice_index": slice_index,
        "file_path": f"masks/{group_id}/{slice_index}-{columns.get('file_size', 0)}.png",
        "file_size": 100,
    } | columns
    names = ", ".join(values)
    placeholders = ", ".join(["%s"] * len(values))
    return int(
        await scalar(
            conn,
            f"insert into annotation_mask ({names}) values ({placeholders}) returning id",
            tuple(values.values()),
        )
    )


# --- constraints ------------------------------------------------------------------------------


async def test_slice_index_is_unique_within_a_group(conn: Conn, seed: Seed) -> None:
    await insert_mask(conn, seed.group_id, 0)
    with pytest.raises(errors.UniqueViolation, match="annotation_mask_group_slice_key"):
        await insert_mask(conn, seed.group_id, 0, file_path="masks/other.png")

    other_group = await scalar(
        conn,
        "insert into annotation_mask_group (annotation_id) values (%s) returning id",
        (seed.annotation_id,),
    )
    await insert_mask(conn, other_group, 0)


async def test_negative_file_size_is_refused(conn: Conn, seed: Seed) -> None:
    with pytest.raises(errors.CheckViolation):
        await insert_mask(conn, seed.group_id, 0, file_size=-1)


async def test_negative_slice_index_is_refused(conn: Conn, seed: Seed) -> None:
    with pytest.raises(errors.CheckViolation):
        await insert_mask(conn, seed.group_id, -1)


@pytest.mark.parametrize(
    "uid",
    [
        "1." + "2" * 63,  # 65 characters
        "1.02.3",  # leading zero in a component
        "01.2",
        "1..2",
        "1.2.",
        "",
        "1.2a",
    ],
)
async def test_malformed_dicom_uids_are_refused(conn: Conn, seed: Seed, uid: str) -> None:
    with pytest.raises(errors.CheckViolation):
        await insert_annotation(conn, seed.user_id, seed.project_id, study_uid=uid)
    with pytest.raises(errors.CheckViolation):
        await insert_mask(conn, seed.group_id, 1, sop_instance_uid=uid)


@pytest.mark.parametrize("uid", ["0", "1.2.0.3", "1." + "2" * 62])
async def test_well_formed_dicom_uids_are_accepted(conn: Conn, seed: Seed, uid: str) -> None:
    await insert_annotation(conn, seed.user_id, seed.project_id, study_uid=uid, series_uid=uid)


async def test_instance_without_series_is_refused(conn: Conn, seed: Seed) -> None:
    with pytest.raises(errors.CheckViolation, match="instance_needs_series"):
        await insert_annotation(conn, seed.user_id, seed.project_id, instance_uid="1.2.3")


@pytest.mark.parametrize("data", ["[]", '"text"', "42", "null"])
async def test_annotation_data_must_be_a_json_object(conn: Conn, seed: Seed, data: str) -> None:
    with pytest.raises(errors.CheckViolation):
        await insert_annotation(conn, seed.user_id, seed.project_id, annotation_data=data)


async def test_email_is_unique_ignoring_case(conn: Conn, seed: Seed) -> None:
    with pytest.raises(errors.UniqueViolation, match="security_user_email_lower_key"):
        await conn.execute(
            "insert into security_user (keycloak_id, username, email)"
            " values (gen_random_uuid(), 'bob', 'alice@example.ORG')"
        )


async def test_deleting_an_annotation_cascades_to_groups_masks_and_uploads(
    conn: Conn, seed: Seed
) -> None:
    await insert_mask(conn, seed.group_id, 0)
    await insert_mask(conn, seed.group_id, 1)
    await conn.execute(
        "insert into mask_upload (upload_id, mask_group_id, slice_index, content_type, size_bytes,"
        " method, object_key, created_by, expires_at)"
        " values (gen_random_uuid(), %s, 2, 'image/png', 10, 'POST', 'masks/x/2.png', %s,"
        " now() + interval '10 minutes')",
        (seed.group_id, seed.user_id),
    )

    # Only an annotation in the trash may be deleted (migration 0013).
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="in the trash"):
        async with conn.transaction():
            await conn.execute(
                "delete from annotation_annotation where id = %s", (seed.annotation_id,)
            )
    await conn.execute(
        "update annotation_annotation set deleted_at = now() where id = %s", (seed.annotation_id,)
    )
    await conn.execute("delete from annotation_annotation where id = %s", (seed.annotation_id,))

    for table in ("annotation_mask_group", "annotation_mask", "mask_upload"):
        assert await scalar(conn, f"select count(*) from {table}") == 0


@pytest.mark.parametrize(
    "statement",
    ["update audit_log set outcome = 'ok'", "delete from audit_log", "truncate audit_log"],
)
async def test_audit_log_is_append_only_even_for_its_owner(conn: Conn, statement: str) -> None:
    await conn.execute(
        "insert into audit_log (subject, action, project_id, outcome)"
        " values ('sub-1', 'DeleteAnnotation', 1, 'denied')"
    )
    assert await scalar(
        conn, "select tableowner = current_user from pg_tables where tablename = 'audit_log'"
    )

    with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        await conn.execute(statement.encode())
    assert await scalar(conn, "select count(*) from audit_log") == 1


# --- indexes for the list queries ---------------------------------------------------------------


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


async def test_list_queries_read_an_index_in_order(conn: Conn, seed: Seed) -> None:
    # 20,000 rows: 2 projects x 20 studies x 2 series, one instance per series, 5 users. Every list
    # path matches well over the LIMIT: with fewer matches than that, sorting them is cheap and the
    # planner rightly prefers it, which is not the case this test is about.
    await conn.execute(
        "insert into security_project (name) values ('other');"
        "insert into security_user (keycloak_id, username)"
        " select gen_random_uuid(), 'user' || g from generate_series(1, 4) g;"
    )
    await conn.execute(
        """
        insert into annotation_annotation
            (user_id, project_id, study_uid, series_uid, instance_uid, annotation_type,
             annotation_data, created_at)
        select u.id, p.id, study, series,
               case when (g / 80) % 2 = 1 then series || '.1' end,
               'length', '{}', now() - g * interval '1 minute'
        from generate_series(1, 20000) g
        cross join lateral (select '1.2.826.0.1.' || ((g / 2) % 20) as study) s
        cross join lateral (
            select case when (g / 80) % 8 <> 0 then study || '.' || ((g / 40) % 2) end as series
        ) se
        cross join lateral (select id from security_project order by id offset g % 2 limit 1) p
        cross join lateral (select id from security_user order by id offset g % 5 limit 1) u
        """
    )
    await conn.execute("analyze annotation_annotation")
    cur = await conn.execute(
        "select study_uid, series_uid, instance_uid from annotation_annotation"
        " where project_id = %s and instance_uid is not null limit 1",
        (seed.project_id,),
    )
    row = await cur.fetchone()
    assert row is not None
    study, series, instance = row

    newest_first = "order by created_at desc, id desc limit 50"
    keyset = "and (created_at, id) < (now() - interval '1 hour', 9223372036854775807)"
    cases: list[tuple[str, tuple[Any, ...], str]] = [
        (f"project_id = %s {keyset}", (seed.project_id,), "annotation_annotation_project_idx"),
        (
            "project_id = %s and study_uid = %s",
            (seed.project_id, study),
            "annotation_annotation_project_study_idx",
        ),
        (
            f"project_id = %s and study_uid = %s {keyset}",
            (seed.project_id, study),
            "annotation_annotation_project_study_idx",
        ),
        (
            "project_id = %s and series_uid = %s",
            (seed.project_id, series),
            "annotation_annotation_project_series_idx",
        ),
        (
            "project_id = %s and instance_uid = %s",
            (seed.project_id, instance),
            "annotation_annotation_project_instance_idx",
        ),
        ("user_id = %s", (seed.user_id,), "annotation_annotation_user_idx"),
    ]
    for where, params, index in cases:
        query = f"explain (format json) select id from annotation_annotation where {where} "
        plan = (await scalar(conn, query + newest_first, params))[0]["Plan"]
        nodes = list(plan_nodes(plan))
        kinds = [n["Node Type"] for n in nodes]
        assert not any(
            n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "annotation_annotation"
            for n in nodes
        ), (where, kinds)
        assert not {"Sort", "Incremental Sort"} & set(kinds), (where, kinds)
        assert index in [n.get("Index Name") for n in nodes], (where, kinds)
