"""The annotation column lists follow Annotation's fields in order: rows become Annotation(*row)."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from pacs_grpc.adapters.postgres import annotations as annotation_sql
from pacs_grpc.domain.annotation import Annotation

FIELDS = [f.name for f in fields(Annotation)]


def _names(columns: str) -> list[str]:
    """Each column's name: its alias, else the last `x.name` it reads."""
    names = []
    for column in re.split(r",(?![^(]*\))", columns):
        alias = re.search(r"\bas (\w+)\s*$", column)
        read = re.findall(r"\b[ap]\.(\w+)", column)
        names.append(alias.group(1) if alias else read[-1])
    return names


@pytest.mark.parametrize("name", ["COLUMNS", "ANSWER_COLUMNS", "BUDGETED_COLUMNS"])
def test_every_column_list_is_the_fields_of_annotation_in_order(name: str) -> None:
    assert _names(getattr(annotation_sql, name)) == FIELDS
