-- 0016_mask_group_trash: deleting a mask group moves it to the trash, as for annotations (0013).

-- A trashed group keeps its slices, exports and stored objects: reads treat it as gone,
-- UndeleteMaskGroup brings it back, and after TRASH_RETENTION_DAYS the sweeper purges it.
-- Its place in its lineage is kept while it is in the trash (undeleting restores it as it
-- was); a purge of the current version makes its predecessor current again.
alter table annotation_mask_group add column deleted_at timestamptz;
comment on column annotation_mask_group.deleted_at is
    'When the group went to the trash; NULL while it is live. Purged after the retention.';
create index annotation_mask_group_trash_idx
    on annotation_mask_group (deleted_at) where deleted_at is not null;

-- Only from the trash, or with its annotation (whose purge cascades here once the annotation
-- row is gone).
create function annotation_mask_group_delete_only_from_trash() returns trigger
    language plpgsql
    as $$
begin
    if old.deleted_at is null
       and exists (select from annotation_annotation where id = old.annotation_id) then
        raise exception 'annotation_mask_group: only a group in the trash may be deleted'
            using errcode = 'object_not_in_prerequisite_state';
    end if;
    return old;
end;
$$;

create trigger annotation_mask_group_delete_only_from_trash
    before delete on annotation_mask_group
    for each row execute function annotation_mask_group_delete_only_from_trash();
