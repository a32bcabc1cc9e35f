-- 0015_mask_group_versions: a complete mask group is never changed; a correction is a version.

-- Every group belongs to a lineage: its first version's id. A new version names the group it
-- supersedes, starts pending, and becomes the lineage's current version once it is complete;
-- the version it superseded stays readable and downloadable. `is_current` marks the one
-- ListMaskGroups shows by default.
alter table annotation_mask_group
    add column lineage_id bigint,
    add column version_number integer not null default 1 check (version_number >= 1),
    add column supersedes_group_id bigint references annotation_mask_group (id) on delete set null,
    add column is_current boolean not null default true,
    -- Provenance: how the model was run, on which series, by which pipeline (token `azp`).
    add column inference_parameters jsonb
        check (inference_parameters is null or jsonb_typeof(inference_parameters) = 'object'),
    add column input_series_uid dicom_uid,
    add column client_id text check (char_length(client_id) <= 256);
update annotation_mask_group set lineage_id = id;
alter table annotation_mask_group alter column lineage_id set not null;

-- The first version is its own lineage: the identity default is assigned before this runs.
create function annotation_mask_group_lineage() returns trigger
language plpgsql as $$
begin
    new.lineage_id := coalesce(new.lineage_id, new.id);
    return new;
end
$$;
create trigger annotation_mask_group_lineage
    before insert on annotation_mask_group
    for each row execute function annotation_mask_group_lineage();

-- One version supersedes a given group at most: two corrections of one version would fork.
create unique index annotation_mask_group_supersedes_key
    on annotation_mask_group (supersedes_group_id) where supersedes_group_id is not null;
create unique index annotation_mask_group_lineage_version_key
    on annotation_mask_group (lineage_id, version_number);

-- A version becomes current when its last slice is recorded, by whichever path recorded it
-- (tickets, a push, an import): once per statement, for the groups the statement completed.
create function annotation_mask_group_promote() returns trigger
language plpgsql as $$
begin
    with completed as (
        select g.id, g.supersedes_group_id
        from annotation_mask_group g
        where g.id in (select distinct mask_group_id from added)
          and not g.is_current
          and g.slice_count <= (select count(*) from annotation_mask m where m.mask_group_id = g.id)
    ), retired as (
        -- Not "old": in a trigger function that names the OLD row.
        update annotation_mask_group previous
        set is_current = false, updated_at = now()
        from completed c
        where previous.id = c.supersedes_group_id
    )
    update annotation_mask_group g
    set is_current = true, updated_at = now()
    from completed c
    where g.id = c.id;
    return null;
end
$$;
create trigger annotation_mask_group_promote
    after insert on annotation_mask
    referencing new table as added
    for each statement execute function annotation_mask_group_promote();

-- Who recorded each slice (a ticket's completion, a push or an import): they count among a
-- group's authors, whom the review step forbids to approve it. NULL for slices from before.
alter table annotation_mask add column recorded_by bigint references security_user (id);
