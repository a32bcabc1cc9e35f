-- 0003_annotation_events: the change feed behind WatchAnnotations, and list paths it needs.

-- One row per created / updated / deleted annotation, written in the transaction of the change.
-- Viewers resume a dropped stream from the last event_id they saw, so the feed is a table, not
-- only NOTIFY (which is lost while nobody listens). Writers take a per-project transaction-level
-- advisory lock just before inserting their event, which makes event_id order equal commit order
-- within a project: a reader that has seen event N of a project has seen every earlier one.
create table annotation_event (
    event_id        bigint generated always as identity primary key,
    -- No foreign keys: events of deleted annotations and projects stay replayable.
    project_id      bigint not null,
    study_uid       text not null,
    annotation_id   bigint not null,
    event_type      text not null check (event_type in ('created', 'updated', 'deleted')),
    occurred_at     timestamptz not null default now()
);
comment on table annotation_event is
    'Change feed of annotations for WatchAnnotations; event_id order is commit order per project.';
create index annotation_event_project_idx on annotation_event (project_id, event_id);
create index annotation_event_project_study_idx
    on annotation_event (project_id, study_uid, event_id);

-- ListAnnotations filtered by type within a project (the other filters have their own indexes).
create index annotation_annotation_project_type_idx
    on annotation_annotation (project_id, annotation_type, created_at desc, id desc);
