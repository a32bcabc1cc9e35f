-- 0008_mask_group_exports: the DICOM Segmentations written from mask groups.

-- One row per ExportMaskGroup: the .dcm in object storage (the exact version written) and what
-- the PACS answered. Keys are made from ids only; the UIDs are the SEG's own, made by the server.
-- Rows go with their group (cascade); deleting a group or an annotation queues the objects for
-- deletion first (pacs_grpc/adapters/postgres/masks.py, annotations.py).
create table mask_group_export (
    id                   bigint generated always as identity primary key,
    mask_group_id        bigint not null references annotation_mask_group (id) on delete cascade,
    object_key           text not null unique,
    object_version       text,
    size_bytes           bigint not null check (size_bytes > 0),
    seg_series_uid       dicom_uid not null,
    seg_sop_instance_uid dicom_uid not null unique,
    series_number        integer not null check (series_number >= 0),
    segment_count        integer not null check (segment_count between 1 and 255),
    pacs_status          text not null
        check (pacs_status in ('NOT_REQUESTED', 'STORED', 'FAILED')),
    pacs_failure_reason  text check (char_length(pacs_failure_reason) <= 500),
    created_by           bigint references security_user (id),
    created_at           timestamptz not null default now(),
    constraint mask_group_export_reason_check
        check ((pacs_status = 'FAILED') = (pacs_failure_reason is not null))
);
comment on table mask_group_export is
    'A DICOM SEG exported from a mask group: its object in storage and the PACS''s answer.';
-- Listing a group's exports newest first; also the index for the cascade from the group.
create index mask_group_export_group_idx on mask_group_export (mask_group_id, id desc);
create index mask_group_export_created_by_idx on mask_group_export (created_by);

-- Written once and read; the cascade from the group runs as the table's owner.
grant select, insert on mask_group_export to pacs_app;
