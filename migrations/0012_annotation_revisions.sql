-- 0012_annotation_revisions: every write of an annotation keeps what it wrote.

-- The annotation row is the current state; each create, update, restore, deletion and
-- undeletion also appends the state it left, under the row_version it set (the etag's number),
-- so history reads without replaying anything and restoring copies one row. The server writes
-- a revision in the same statement as the change it records.
create table annotation_revision (
    annotation_id               bigint not null
                                references annotation_annotation (id) on delete cascade,
    revision                    bigint not null check (revision >= 1),
    action                      text not null check (
        action in ('created', 'updated', 'restored', 'deleted', 'undeleted')),
    -- The content fields this write changed (all that were set, for a creation).
    changed_fields              text[] not null,
    -- Who wrote it; NULL only for the revision kept of an annotation written before this table.
    user_id                     bigint references security_user (id),
    -- For action 'restored': the revision whose content was written back.
    restored_from               bigint,
    annotation_type             text not null,
    annotation_data             jsonb not null,
    measurement_values          jsonb,
    viewer_software             text,
    annotation_data_encoded     bytea,
    measurement_values_encoded  bytea,
    created_at                  timestamptz not null default now(),
    primary key (annotation_id, revision),
    constraint annotation_revision_restored_names_its_source
        check ((action = 'restored') = (restored_from is not null))
);
comment on table annotation_revision is
    'Append-only history of annotation_annotation: the state each write left, keyed by row_version.';

-- Annotations written before this table keep one revision: their current state, under their
-- current row_version. Who made earlier changes is not known, so only a creation names its author.
insert into annotation_revision (
    annotation_id, revision, action, changed_fields, user_id, annotation_type, annotation_data,
    measurement_values, viewer_software, annotation_data_encoded, measurement_values_encoded,
    created_at)
select a.id, a.row_version,
       case when a.row_version = 1 then 'created' else 'updated' end,
       case when a.row_version = 1
            then array_remove(array['annotation_data', 'annotation_type',
                    case when a.measurement_values is not null then 'measurement_values' end,
                    case when a.viewer_software is not null then 'viewer_software' end], null)
            else '{}' end,
       case when a.row_version = 1 then a.user_id end,
       a.annotation_type, a.annotation_data, a.measurement_values, a.viewer_software,
       a.annotation_data_encoded, a.measurement_values_encoded, a.updated_at
from annotation_annotation a;

-- History is never rewritten. A revision goes only with its annotation: the cascade from the
-- annotation's delete runs once the annotation row is gone, and that is the one DELETE allowed.
-- A trigger, as for audit_log, because grants do not bind the table owner.
create function annotation_revision_refuse_change() returns trigger
    language plpgsql
    as $$
begin
    if tg_op = 'DELETE'
       and not exists (select from annotation_annotation where id = old.annotation_id) then
        return old;
    end if;
    raise exception 'annotation_revision is append-only: % is not allowed', tg_op
        using errcode = 'insufficient_privilege';
end;
$$;

create trigger annotation_revision_no_update_delete
    before update or delete on annotation_revision
    for each row execute function annotation_revision_refuse_change();
create trigger annotation_revision_no_truncate
    before truncate on annotation_revision
    for each statement execute function annotation_revision_refuse_change();

revoke update, delete, truncate on annotation_revision from public;
grant select, insert on annotation_revision to pacs_app;
