"""The list query the repository builds reads an index in order: no sort, no scan of the table.

That is what keeps listing one study as fast with a million rows as with ten
thousand; the benchmark in bench/ measures it, this test guards the plan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pacs_grpc.adapters.postgres.annotations import build_list_query
from pacs_grpc.domain.annotation import ListFilter
from pacs_grpc.domain.review import ReviewState
from tests.support.databases import create_database, drop_database, new_database_name

ROWS = 60_000


@pytest.fixture(scope="module")
async def filled_database(postgres_admin_url: str, migrated_template: str) -> AsyncIterator[str]:
    name = new_database_name("pacs_plan")
    url = await create_database(postgres_admin_url, name, template=migrated_template)
    try:
        _fill(url)
        yield url
    finally:
        await drop_database(postgres_admin_url, name)


def _fill(database_url: str) -> None:
    # Studies far larger than a page, as in a busy PACS: reading the index in
    # order and stopping after one page must beat collecting and sorting.
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "insert into security_user (keycloak_id, username) values"
            " ('00000000-0000-4000-8000-000000000001', 'loader')"
        )
        conn.execute("insert into security_project (name) values ('a'), ('b')")
        conn.execute(
            """
            insert into annotation_annotation (user_id, project_id, study_uid, series_uid,
                instance_uid, annotation_type, annotation_data, created_at, review_state,
                deleted_at)
            select 1, 1 + (n %% 2), '1.2.' || (n %% 20), '1.2.' || (n %% 20) || '.' || (n %% 3),
                   '1.2.' || (n %% 20) || '.' || (n %% 3) || '.' || n,
                   case when n %% 5 = 0 then 'point' else 'polygon' end, '{}'::jsonb,
                   now() - make_interval(secs => n),
                   case when n %% 7 = 0 then 'submitted' else 'draft' end,
                   case when n %% 50 = 0 then now() end
            from generate_series(1, %s) n
            """,
            [ROWS],
        )
        conn.execute("analyze annotation_annotation")


def _plan(database_url: str, filters: ListFilter, after: tuple[datetime, int] | None) -> Any:
    query, params = build_list_query(filters, after=after, limit=51, budget_bytes=4 << 20)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql.SQL("explain (format json) ") + query, params).fetchone()
    assert row is not None
    return row[0][0]["Plan"]


def _nodes(plan: Any) -> list[Any]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        (
            ListFilter(project_ids=(1,), study_uid="1.2.7"),
            "annotation_annotation_project_study_idx",
        ),
        (
            ListFilter(project_ids=(1,), series_uid="1.2.7.1"),
            "annotation_annotation_project_series_idx",
        ),
        (ListFilter(project_ids=(1,)), "annotation_annotation_project_idx"),
        (
            ListFilter(project_ids=(1,), annotation_type="point"),
            "annotation_annotation_project_type_idx",
        ),
        # The review queue (migration 0014).
        (
            ListFilter(project_ids=(1,), review_state=ReviewState.SUBMITTED),
            "annotation_annotation_project_review_idx",
        ),
        # Owners listing the trash with the rest: the same paths.
        (
            ListFilter(project_ids=(1,), study_uid="1.2.7", include_deleted=True),
            "annotation_annotation_project_study_idx",
        ),
    ],
)
@pytest.mark.parametrize("paged", [False, True])
def test_list_paths_read_their_index_in_order(
    filled_database: str, filters: ListFilter, index: str, paged: bool
) -> None:
    after = (datetime.now(UTC), 10**9) if paged else None
    nodes = _nodes(_plan(filled_database, filters, after))
    kinds = [node["Node Type"] for node in nodes]
    assert "Sort" not in kinds
    assert "Incremental Sort" not in kinds
    assert "Seq Scan" not in kinds
    assert index in {node.get("Index Name") for node in nodes}, kinds
