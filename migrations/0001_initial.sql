-- 0001_initial: the whole schema of the PACS Extension Server.
--
-- Conventions (PostgreSQL 15 and 16):
-- * The migrator runs this file in one transaction; it must not contain BEGIN/COMMIT or anything that
--   refuses to run in a transaction (CREATE INDEX CONCURRENTLY, CREATE DATABASE).
-- * No trigger maintains updated_at: every UPDATE the application issues sets `updated_at = now()`, so
--   the behaviour is visible in the SQL that causes it.
-- * Every foreign key column is indexed, directly or as the leading column of a composite index, so that
--   cascades and existence checks on the parent never scan the child.
-- * Foreign keys without ON DELETE keep the default (NO ACTION): deleting a user or a project that still
--   owns annotations must be a deliberate application step, because the masks below them own objects in
--   storage that have to be queued in storage_deletion_outbox in the same transaction.

-- PS3.5 §9.1: dot-separated components of digits, no leading zeros (a lone 0 is fine), at most 64
-- characters. A domain keeps the rule in one place for every UID column.
create domain dicom_uid as text
    constraint dicom_uid_length check (char_length(value) <= 64)
    constraint dicom_uid_syntax check (value ~ '^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$');

-- ---------------------------------------------------------------------------------------------------
-- Users and projects

create table security_user (
    id              bigint generated always as identity primary key,
    keycloak_id     uuid not null unique,
    username        text not null unique,
    email           text,
    full_name       text,
    organization    text,
    department      text,
    phone           text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
comment on table security_user is
    'Local profile of a Keycloak user; keycloak_id is the token sub that identifies the caller.';
-- Case-insensitive so that Alice@x and alice@x cannot be two accounts; NULLs stay distinct.
create unique index security_user_email_lower_key on security_user (lower(email));

create table security_project (
    id              bigint generated always as identity primary key,
    name            text not null unique,
    description     text,
    is_active       boolean not null default true,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
comment on table security_project is
    'Unit of access control: annotations belong to a project and members act on them by role.';

create table security_project_member (
    project_id      bigint not null references security_project (id) on delete cascade,
    user_id         bigint not null references security_user (id) on delete cascade,
    role            text not null check (role in ('viewer', 'annotator', 'owner')),
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    primary key (project_id, user_id)
);
comment on table security_project_member is
    'Role of a user in a project; read on every call to authorise it.';
-- "Which projects am I in?" The primary key covers the project side.
create index security_project_member_user_id_idx on security_project_member (user_id);

-- ---------------------------------------------------------------------------------------------------
-- Annotations

create table annotation_annotation (
    id                  bigint generated always as identity primary key,
    user_id             bigint not null references security_user (id),
    project_id          bigint not null references security_project (id),
    study_uid           dicom_uid not null,
    series_uid          dicom_uid,
    instance_uid        dicom_uid,
    annotation_type     text not null check (char_length(annotation_type) between 1 and 64),
    annotation_data     jsonb not null check (jsonb_typeof(annotation_data) = 'object'),
    measurement_values  jsonb,
    viewer_software     text check (char_length(viewer_software) <= 128),
    -- The etag: every UPDATE sets row_version = row_version + 1, so a client's stale copy is detected.
    row_version         bigint not null default 1 check (row_version >= 1),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    constraint annotation_annotation_instance_needs_series
        check (instance_uid is null or series_uid is not null)
);
comment on table annotation_annotation is
    'A measurement or drawing on a DICOM study, series or instance, made by a user in a project.';

-- One index per list path, each ending in (created_at DESC, id DESC) so that the keyset query
--   WHERE <equality filters> AND (created_at, id) < ($c, $i) ORDER BY created_at DESC, id DESC LIMIT n
-- is an index range scan that stops after n rows: no sort, however many rows match. The equality
-- columns must lead; the row comparison then becomes the scan's start position.
create index annotation_annotation_project_idx
    on annotation_annotation (project_id, created_at desc, id desc);
create index annotation_annotation_project_study_idx
    on annotation_annotation (project_id, study_uid, created_at desc, id desc);
create index annotation_annotation_project_series_idx
    on annotation_annotation (project_id, series_uid, created_at desc, id desc)
    where series_uid is not null;
create index annotation_annotation_project_instance_idx
    on annotation_annotation (project_id, instance_uid, created_at desc, id desc)
    where instance_uid is not null;
-- Serves the user_id foreign key and the "created by" filter.
create index annotation_annotation_user_idx
    on annotation_annotation (user_id, created_at desc, id desc);

-- ---------------------------------------------------------------------------------------------------
-- Masks: a group per segmentation result, one PNG (or similar) object per slice

create table annotation_mask_group (
    id              bigint generated always as identity primary key,
    annotation_id   bigint not null references annotation_annotation (id) on delete cascade,
    group_name      text,
    model_name      text,
    version         text,
    modality        text,
    slice_count     integer not null default 1 check (slice_count between 1 and 100000),
    mask_type       text not null default 'segmentation',
    description     text,
    created_by      bigint references security_user (id),
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
comment on table annotation_mask_group is
    'A set of mask slices (one segmentation run) attached to an annotation.';
-- Lists an annotation's groups in id order and serves the cascade from annotation_annotation.
create index annotation_mask_group_annotation_idx on annotation_mask_group (annotation_id, id);
create index annotation_mask_group_created_by_idx on annotation_mask_group (created_by);

create table annotation_mask (
    id                  bigint generated always as identity primary key,
    mask_group_id       bigint not null references annotation_mask_group (id) on delete cascade,
    slice_index         integer not null check (slice_index >= 0),
    sop_instance_uid    dicom_uid,
    label_name          text,
    file_path           text not null unique,
    mime_type           text not null default 'image/png',
    file_size           bigint not null check (file_size >= 0),
    checksum            text,
    width               integer check (width > 0),
    height              integer check (height > 0),
    -- The pending upload this row completed: a retried "complete" finds the row instead of adding one.
    upload_id           uuid unique,
    created_at          timestamptz not null default now(),
    -- Also the index for the cascade from the group and for listing a group in slice order.
    constraint annotation_mask_group_slice_key unique (mask_group_id, slice_index)
);
comment on table annotation_mask is
    'One uploaded mask slice: metadata of an object in storage; file_path is its object key.';

create table mask_upload (
    upload_id           uuid primary key,
    mask_group_id       bigint not null references annotation_mask_group (id) on delete cascade,
    slice_index         integer not null check (slice_index >= 0),
    sop_instance_uid    dicom_uid,
    label_name          text,
    content_type        text not null,
    size_bytes          bigint not null check (size_bytes >= 0),
    md5                 text check (md5 ~ '^[0-9a-f]{32}$'),
    method              text not null check (method in ('POST', 'PUT')),
    object_key          text not null unique,
    created_by          bigint references security_user (id),
    expires_at          timestamptz not null,
    completed_at        timestamptz,
    created_at          timestamptz not null default now()
);
comment on table mask_upload is
    'A signed upload handed to a client; completing it creates the annotation_mask row.';
-- The sweeper's query: tickets that expired without being completed (their objects may be orphans).
create index mask_upload_expires_pending_idx on mask_upload (expires_at) where completed_at is null;
create index mask_upload_group_slice_idx on mask_upload (mask_group_id, slice_index);
create index mask_upload_created_by_idx on mask_upload (created_by);

-- ---------------------------------------------------------------------------------------------------
-- Plumbing

create table idempotency_key (
    user_id             bigint not null references security_user (id) on delete cascade,
    operation           text not null,
    request_id          text not null check (char_length(request_id) between 1 and 128),
    -- No foreign key: operations create different kinds of resources.
    resource_id         bigint not null,
    -- Hash of the request: a retry matches it; a different request reusing the key does not.
    request_fingerprint text not null,
    created_at          timestamptz not null default now(),
    primary key (user_id, operation, request_id)
);
comment on table idempotency_key is
    'Result of a create call made with a client request_id, so that a retry returns the same resource.';

create table storage_deletion_outbox (
    id                  bigint generated always as identity primary key,
    object_key          text not null,
    enqueued_at         timestamptz not null default now(),
    attempts            integer not null default 0 check (attempts >= 0),
    next_attempt_at     timestamptz not null default now(),
    last_error          text
);
comment on table storage_deletion_outbox is
    'Storage objects to delete, written in the transaction that deletes their rows; a worker drains it.';
create index storage_deletion_outbox_next_attempt_idx on storage_deletion_outbox (next_attempt_at);

create table audit_log (
    id              bigint generated always as identity primary key,
    occurred_at     timestamptz not null default now(),
    subject         text,
    client_id       text,
    -- No foreign key on purpose: the audit trail must outlive the projects it mentions.
    project_id      bigint,
    action          text not null,
    resource_type   text,
    resource_ids    bigint[],
    study_uid       text,
    outcome         text not null check (outcome in ('ok', 'denied', 'error')),
    error_code      text,
    request_id      text
);
comment on table audit_log is
    'Append-only record of who called what on which project, and the outcome.';
create index audit_log_project_occurred_idx on audit_log (project_id, occurred_at);
create index audit_log_subject_occurred_idx on audit_log (subject, occurred_at);

-- Grants alone do not bind the table owner, and the application may well connect as the owner; a
-- trigger does. (A superuser or the owner can still DISABLE TRIGGER: that is a visible, deliberate act.)
create function audit_log_refuse_change() returns trigger
    language plpgsql
    as $$
begin
    raise exception 'audit_log is append-only: % is not allowed', tg_op
        using errcode = 'insufficient_privilege';
end;
$$;

create trigger audit_log_no_update_delete
    before update or delete on audit_log
    for each row execute function audit_log_refuse_change();
create trigger audit_log_no_truncate
    before truncate on audit_log
    for each statement execute function audit_log_refuse_change();

revoke update, delete, truncate on audit_log from public;

-- Intended grants for a dedicated application role. Roles are cluster-wide, so the deployment creates
-- them, not this migration; the migrations run as a separate owner role. Identity columns need no
-- sequence grants.
--   create role pacs_app login;
--   grant usage on schema public to pacs_app;
--   grant select, insert, update, delete on all tables in schema public to pacs_app;
--   revoke insert, update, delete on schema_migrations from pacs_app;  -- serve only reads it
--   revoke update, delete on audit_log from pacs_app;                  -- audit_log: SELECT, INSERT
