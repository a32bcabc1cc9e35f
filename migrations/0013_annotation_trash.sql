-- 0013_annotation_trash: deleting an annotation moves it to the trash; purging is the only hard delete.

-- A trashed annotation keeps its row, history, mask groups and stored objects: reads treat it
-- as gone, UndeleteAnnotation clears deleted_at, and after TRASH_RETENTION_DAYS the sweeper
-- purges it as DeleteAnnotation did before (objects to the outbox, rows by cascade).
alter table annotation_annotation add column deleted_at timestamptz;
comment on column annotation_annotation.deleted_at is
    'When the annotation went to the trash; NULL while it is live. Purged after the retention.';

-- The sweeper's search for what is past retention. The trash is a small part of the table.
create index annotation_annotation_trash_idx
    on annotation_annotation (deleted_at) where deleted_at is not null;

-- Nothing is hard-deleted without passing through the trash, so no path (a bug, a hand-typed
-- statement) can drop a live annotation and its history at once. A purge marks the row, then
-- deletes it, in one transaction.
create function annotation_delete_only_from_trash() returns trigger
    language plpgsql
    as $$
begin
    if old.deleted_at is null then
        raise exception 'annotation_annotation: only an annotation in the trash may be deleted'
            using errcode = 'object_not_in_prerequisite_state';
    end if;
    return old;
end;
$$;

create trigger annotation_delete_only_from_trash
    before delete on annotation_annotation
    for each row execute function annotation_delete_only_from_trash();

-- Watch says when an annotation comes back from the trash.
alter table annotation_event drop constraint annotation_event_event_type_check;
alter table annotation_event add constraint annotation_event_event_type_check
    check (event_type in ('created', 'updated', 'deleted', 'restored'));
