"""Annotation column lists shared by the annotation adapters: what reads answer with, and the
revision every write appends (migration 0012)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from pacs_grpc.domain.annotation import Annotation, RevisionNote

ANNOTATION_FIELDS = [f.name for f in fields(Annotation)]
# A JSON field and the column that keeps its encoding (migration 0010).
ENCODING_OF = {
    "annotation_data": "annotation_data_encoded",
    "measurement_values": "measurement_values_encoded",
}
_JSON_READS = frozenset(ENCODING_OF) | frozenset(ENCODING_OF.values())


def answer_columns(alias: str, *, prefix: str = "", within: str | None = None) -> str:
    """Annotation's fields in order, as reads that only answer take them: a JSON field is
    left out (None) where its encoding was kept, since decoding it would cost more than all
    else in a row; with `within`, JSON of either kind only where that condition holds (a
    byte budget). Columns are `alias.prefix<field>`."""

    def column(name: str) -> str:
        conditions = [within] if within and name in _JSON_READS else []
        if name in ENCODING_OF:
            conditions.append(f"{alias}.{prefix}{ENCODING_OF[name]} is null")
        read = f"{alias}.{prefix}{name}"
        return f"case when {' and '.join(conditions)} then {read} end" if conditions else read

    return ", ".join(f"{column(name)} as {name}" for name in ANNOTATION_FIELDS)


COLUMNS = ", ".join(f"a.{name}" for name in ANNOTATION_FIELDS)
ANSWER_COLUMNS = answer_columns("a")
# Over a budgeted page `p`: the JSON only where the page's budget still allows it.
BUDGETED_COLUMNS = answer_columns("p", within="p.before_bytes < %(budget_bytes)s")

# The content a revision keeps, in annotation_revision's column order.
REVISION_CONTENT = (
    "annotation_type", "annotation_data", "measurement_values", "viewer_software",
    "annotation_data_encoded", "measurement_values_encoded",
)  # fmt: skip


# What a revision keeps besides the content: the review state the write left.
REVISION_STATE = (*REVISION_CONTENT, "review_state", "review_comment")
# Content changes make a draft again (migration 0014): approval covers what was approved only.
BACK_TO_DRAFT = (
    "review_state = 'draft', review_comment = null, reviewed_by = null, reviewed_at = null"
)


def append_revision(written: str, *, changed_fields: str = "%(changed_fields)s") -> str:
    """An insert of the revision that the write in CTE `written` (its rows as `annotation_annotation
    returning *`) leaves: under the row's new row_version, with the note's action and author."""
    content = ", ".join(REVISION_STATE)
    taken = ", ".join(f"w.{name}" for name in REVISION_STATE)
    return (
        "insert into annotation_revision (annotation_id, revision, action, changed_fields,"
        f" user_id, restored_from, {content}, created_at)"
        f" select w.id, w.row_version, %(action)s, {changed_fields}, %(actor)s,"
        f" %(restored_from)s, {taken}, w.updated_at from {written} w"
    )


def note_params(note: RevisionNote) -> dict[str, Any]:
    return {
        "action": note.action.value,
        "changed_fields": list(note.changed_fields),
        "actor": note.user_id,
        "restored_from": None,
    }
